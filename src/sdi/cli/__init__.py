"""The ``sdi`` command line: thin wrappers over the library."""
