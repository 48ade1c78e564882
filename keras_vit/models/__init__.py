"""Model factories built from `keras_vit.layers`.

Example:
>>> from keras_vit.models import vision_transformer
>>> model = vision_transformer("B/16", num_classes=1000)
"""

from keras_vit.models.attention_maps import (
    attention_rollout,
    attention_weights,
    rollout_maps,
)
from keras_vit.models.tta import shift_averaged
from keras_vit.models.vit import VIT_VARIANTS, parse_variant, vision_transformer

__all__ = ["VIT_VARIANTS", "attention_rollout", "attention_weights",
           "parse_variant", "rollout_maps", "shift_averaged", "vision_transformer"]
