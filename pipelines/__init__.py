"""TensorFlow-side jobs of keras-vit: input pipelines, training, tuning, export."""

from pipelines.onednn import prefer_onednn

# Before anything imports TensorFlow, which reads the variable once (pipelines.onednn).
prefer_onednn()
