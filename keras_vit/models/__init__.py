"""Model factories built from `keras_vit.layers`, checkpoint import and fine-tuning helpers.

Example:
>>> from keras_vit.models import load_checkpoint, vision_transformer
>>> model = vision_transformer("B/16", num_classes=1000)
"""

from keras_vit.models.activations import gelu_tanh
from keras_vit.models.attention_maps import (
    attention_rollout,
    attention_weights,
    block_inputs_model,
    rollout_maps,
)
from keras_vit.models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    open_checkpoint,
    resample_position_embedding,
)
from keras_vit.models.decoder_steps import DecoderSteps, decoder_steps
from keras_vit.models.decoding import beam_search, encode, greedy_decode, length_normalised
from keras_vit.models.finetune import freeze_backbone, replace_head
from keras_vit.models.transformer import (
    PaddingMask,
    image_to_sequence,
    teacher_forcing_inputs,
    transformer,
)
from keras_vit.models.tta import shift_averaged, shift_averaged_decode
from keras_vit.models.vit import VIT_VARIANTS, parse_variant, token_features, vision_transformer

__all__ = ["VIT_VARIANTS", "CheckpointError", "DecoderSteps", "PaddingMask", "beam_search",
           "decoder_steps", "encode", "greedy_decode", "image_to_sequence", "length_normalised",
           "teacher_forcing_inputs", "transformer", "attention_rollout", "attention_weights",
           "block_inputs_model", "freeze_backbone", "gelu_tanh", "load_checkpoint",
           "open_checkpoint", "parse_variant", "replace_head", "resample_position_embedding",
           "rollout_maps", "shift_averaged", "shift_averaged_decode", "token_features",
           "vision_transformer"]
