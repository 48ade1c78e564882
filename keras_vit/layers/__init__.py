"""Attention and Transformer layers for Keras 3, written with `keras.ops` only.

The test suite runs them on the TensorFlow and JAX backends (`make test`).

Example:
>>> from keras_vit.layers import MultiHeadAttention, TransformerEncoderBlock
"""

from keras_vit.layers.activations import gelu
from keras_vit.layers.attention import (
    AdditiveAttention,
    NadarayaWatsonAttention,
    ScaledDotProductAttention,
)
from keras_vit.layers.feed_forward import AddNorm, DropPath, PositionWiseFeedForward
from keras_vit.layers.masking import causal_mask, masked_softmax, merge_masks
from keras_vit.layers.multi_head_attention import MultiHeadAttention
from keras_vit.layers.normalization import LayerNormalization, layer_norm
from keras_vit.layers.patching import ClassToken, PatchEmbedding
from keras_vit.layers.pooling import TokenPooling
from keras_vit.layers.position import (
    PositionEmbedding,
    SinCosPositionEncoding2D,
    SinusoidalPositionEncoding,
    sincos_2d_table,
    sinusoidal_table,
)
from keras_vit.layers.transformer import TransformerDecoderBlock, TransformerEncoderBlock
from keras_vit.layers.views import ShiftedViews, ViewAverage

__all__ = [
    "AddNorm", "AdditiveAttention", "ClassToken", "DropPath", "LayerNormalization",
    "MultiHeadAttention", "NadarayaWatsonAttention", "PatchEmbedding", "PositionEmbedding",
    "PositionWiseFeedForward", "ScaledDotProductAttention", "ShiftedViews",
    "SinCosPositionEncoding2D", "SinusoidalPositionEncoding", "TokenPooling",
    "TransformerDecoderBlock", "TransformerEncoderBlock", "ViewAverage", "causal_mask", "gelu",
    "layer_norm", "masked_softmax", "merge_masks", "sincos_2d_table", "sinusoidal_table",
]
