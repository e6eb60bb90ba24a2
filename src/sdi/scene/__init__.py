"""Scene: cameras, the procedural object catalog and its ground-truth sphere-traced renderer.

Conventions: the object sits at the origin inside [-1, 1]^3 (catalog objects within radius 0.5),
+y is up, cameras are OpenGL (look down their -z axis), renders are (B, 3, H, W) in [0, 1].
"""
