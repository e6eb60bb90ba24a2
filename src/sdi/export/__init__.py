"""Export a trained scene: meshes (GLB, OBJ, PLY) and turntable videos (MP4, GIF)."""
