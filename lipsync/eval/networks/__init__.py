"""The public metric networks of the evaluation (syncnet_v2, InceptionV3, ArcFace) and their weights."""
