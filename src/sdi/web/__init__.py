"""`sdi serve`: a local web page over the library's own run functions (queue and run folders here, Gradio in app.py)."""
