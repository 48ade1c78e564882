"""keras-vit: Vision Transformers for Keras 3, from attention pooling to serving."""

__version__ = "0.1.0"
