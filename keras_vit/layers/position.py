"""Position information for token sequences: 1-D and 2-D sin-cos, and learned."""

import keras
import numpy as np
from keras import ops

from keras_vit.layers.validation import (
    check_pair,
    check_positive_float,
    check_positive_int,
    check_rate,
)


def sinusoidal_table(length, dim, base=10000.0):
    """`P[i, 2j] = sin(i / base^(2j/d))`, `P[i, 2j+1] = cos(i / base^(2j/d))` as a numpy array.

    Args:
        length: int. Number of positions.
        dim: int. Feature size `d` (odd sizes work: the last column is a sine).
        base: float. Wavelength base. Defaults to 10000.

    Returns:
        float32 numpy array `(length, dim)`.
    """
    positions = np.arange(length, dtype=np.float64)[:, None]
    even = np.arange(0, dim, 2, dtype=np.float64)  # 2j for every sin column
    angles = positions / np.power(base, even / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype("float32")


def sincos_2d_table(grid_height, grid_width, dim, temperature=10000.0):
    """2-D sin-cos position table `(gh * gw, dim)` for a row-major patch grid.

    The first half of the channels encodes the row, the second half the column,
    each as `[sin, cos]` blocks of a 1-D frequency ladder (as in big_vision's
    `posemb_sincos_2d` and MAE).

    Args:
        grid_height: int. Rows of patches.
        grid_width: int. Columns of patches.
        dim: int divisible by 4. Feature size.
        temperature: float. Wavelength base.

    Returns:
        float32 numpy array `(grid_height * grid_width, dim)`.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos encoding needs a feature size divisible by 4; "
                         f"received dim={dim}")
    rows, cols = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))

    def encode(coordinate):
        angles = coordinate.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(cols)], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="keras_vit")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal encoding `P` of "Attention Is All You Need": `X + P`.

    Args:
        max_length: int > 0. Longest sequence the layer accepts.
        dropout: float in [0, 1). Dropout after the addition, in training.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> x = np.zeros((1, 60, 32), "float32")
    >>> p = SinusoidalPositionEncoding(max_length=1000)(x)  # p[0] == P[:60]

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.5.
    """

    def __init__(self, max_length, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_length = check_positive_int("max_length", max_length)
        self.dropout = check_rate("dropout", dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self._check_length(input_shape[-2])
        self.table = ops.convert_to_tensor(sinusoidal_table(self.max_length, input_shape[-1]))

    def _check_length(self, length):
        # Static lengths only (every eager call, any traced call of known shape);
        # a dynamic one in a TF graph fails in the addition instead.
        if isinstance(length, int) and length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length={self.max_length}")

    def call(self, inputs, training=None):
        length = ops.shape(inputs)[-2]
        self._check_length(length)
        encoding = ops.cast(self.table[:length], inputs.dtype)
        return self.dropout_layer(inputs + encoding, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_length": self.max_length, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class SinCosPositionEncoding2D(keras.layers.Layer):
    """Adds a fixed 2-D sin-cos encoding to patch tokens `(B, gh * gw, d)`.

    Args:
        grid_size: int or (int, int). Patch grid `(gh, gw)`; tokens are row-major.
        temperature: float > 0. Wavelength base. Defaults to 10000.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> tokens = np.zeros((2, 4 * 6, 32), "float32")
    >>> SinCosPositionEncoding2D(grid_size=(4, 6))(tokens).shape  # (2, 24, 32)

    References:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021;
        Beyer et al., "Better plain ViT baselines for ImageNet-1k", 2022.
    """

    def __init__(self, grid_size, temperature=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = check_pair("grid_size", grid_size, "(rows, cols)")
        self.temperature = check_positive_float("temperature", temperature)

    def build(self, input_shape):
        tokens, dim = input_shape[-2], input_shape[-1]
        expected = self.grid_size[0] * self.grid_size[1]
        if tokens is not None and tokens != expected:
            raise ValueError(f"expected {expected} tokens for grid_size={self.grid_size}; "
                             f"received {tokens}")
        self.table = ops.convert_to_tensor(sincos_2d_table(*self.grid_size, dim, self.temperature))

    def call(self, inputs):
        return inputs + ops.cast(self.table, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "temperature": self.temperature})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding `(1, sequence_length, d)` to its input.

    Args:
        sequence_length: int > 0. Number of positions (tokens).
        initializer: initializer of the embedding. Defaults to a truncated
            normal with stddev 0.02, as in ViT.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> PositionEmbedding(sequence_length=197)(np.zeros((2, 197, 64), "float32")).shape

    References:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020.
    """

    def __init__(self, sequence_length, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.TruncatedNormal(stddev=0.02))

    def build(self, input_shape):
        if input_shape[-2] is not None and input_shape[-2] != self.sequence_length:
            raise ValueError(f"expected {self.sequence_length} tokens; received shape "
                             f"{tuple(input_shape)}")
        self.embedding = self.add_weight(name="embedding",
                                         shape=(1, self.sequence_length, input_shape[-1]),
                                         initializer=self.initializer)

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length,
                       "initializer": keras.initializers.serialize(self.initializer)})
        return config
