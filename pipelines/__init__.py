"""TensorFlow-side jobs of keras-vit: input pipelines, training, tuning, export."""
