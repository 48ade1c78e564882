"""Import published ViT checkpoints: Google `.npz`, Hugging Face, timm, keras-hub.

Example:
>>> from keras_vit.models.checkpoints import load_checkpoint
>>> model = load_checkpoint("ViT-B_16.npz", image_shape=(384, 384), num_classes=10)
"""

from keras_vit.models.checkpoints.loader import load_checkpoint, open_checkpoint
from keras_vit.models.checkpoints.resample import resample_position_embedding
from keras_vit.models.checkpoints.sources import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "open_checkpoint",
           "resample_position_embedding"]
