"""Image sets for the exemplar prior: a procedural built-in set (no download) and a folder loader."""
