"""Per-position MLP, residual + layer norm, and stochastic depth."""

import keras
from keras import ops

from keras_vit.layers.activations import faster_equivalent
from keras_vit.layers.bias import add_bias
from keras_vit.layers.normalization import LayerNormalization
from keras_vit.layers.validation import (
    check_activation,
    check_positive_float,
    check_positive_int,
    check_rate,
    check_same_shape,
)


@keras.saving.register_keras_serializable(package="keras_vit")
class PositionWiseFeedForward(keras.layers.Layer):
    """Two dense layers applied at every position: `(B, T, d) -> (B, T, d)`.

    `dense2(dropout(activation(dense1(x))))`, then dropout.

    Args:
        hidden_dim: int > 0. Width of the hidden layer (ViT's "MLP size").
        activation: activation of the hidden layer. Defaults to `"gelu"`.
        dropout: float in [0, 1). Dropout after each dense layer, in training.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> PositionWiseFeedForward(hidden_dim=64)(np.ones((2, 3, 16), "float32")).shape  # (2, 3, 16)
    """

    def __init__(self, hidden_dim, activation="gelu", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.activation = check_activation("activation", activation)
        self.dropout = check_rate("dropout", dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        # Keras' exact GELU, computed faster (keras_vit.layers.activations).
        self.dense1 = keras.layers.Dense(self.hidden_dim,
                                         activation=faster_equivalent(self.activation),
                                         name="dense1", dtype=self.dtype_policy)
        self.dense1.build(input_shape)
        self.dense2 = keras.layers.Dense(input_shape[-1], name="dense2", dtype=self.dtype_policy)
        self.dense2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, inputs, training=None):
        # The dense layers see rows `(B * T, d)`: on TensorFlow a rank-3 `Dense`
        # input becomes a batched matmul, which oneDNN does not fuse with the
        # bias and GELU; as 2-D matmuls the MLP's forward pass took 0.72x the
        # time at ViT-Ti/16 shapes (benchmarks/README.md, `vit`). In training
        # the bias is added by `add_bias`: Keras' `Dense` gradient sums a
        # bfloat16 bias gradient in bfloat16 on TensorFlow (~50 % error).
        shape = ops.shape(inputs)
        rows = ops.reshape(inputs, (-1, shape[-1]))
        hidden = self.dropout_layer(self._dense(self.dense1, rows, training), training=training)
        outputs = self.dropout_layer(self._dense(self.dense2, hidden, training), training=training)
        return ops.reshape(outputs, shape)

    def _dense(self, layer, rows, training):
        """`layer(rows)`; in bfloat16 training, with the bias gradient summed in float32 precision."""
        if (not training or self.compute_dtype != "bfloat16"
                or layer.quantization_mode is not None or layer.lora_enabled):
            return layer(rows)
        outputs = ops.matmul(rows, ops.cast(layer.kernel, self.compute_dtype))
        if layer.use_bias:
            outputs = add_bias(outputs, ops.cast(layer.bias, self.compute_dtype))
        return layer.activation(outputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim,
                       "activation": keras.activations.serialize(self.activation),
                       "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class AddNorm(keras.layers.Layer):
    """Residual connection then layer normalisation: `LayerNorm(x + dropout(y))`.

    Args:
        dropout: float in [0, 1). Dropout on `y`, in training.
        epsilon: float > 0. Layer-norm epsilon. Defaults to `1e-6`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> x = np.random.rand(2, 3, 4).astype("float32")
    >>> AddNorm()(x, x).shape  # (2, 3, 4)
    """

    def __init__(self, dropout=0.0, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.dropout = check_rate("dropout", dropout)
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        # Keras' layer (statistics in float32 under mixed precision), written-out gradient.
        self.norm = LayerNormalization(epsilon=self.epsilon, name="norm", dtype=self.dtype_policy)

    def build(self, x_shape, y_shape=None):
        if y_shape is not None:
            check_same_shape("y", y_shape, "x", x_shape)
        self.norm.build(x_shape)

    def call(self, x, y, training=None):
        check_same_shape("y", y.shape, "x", x.shape)
        return self.norm(x + self.dropout_layer(y, training=training))

    def compute_output_shape(self, x_shape, y_shape=None):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample during training.

    Kept samples are scaled by `1 / (1 - rate)`; identity at inference.

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: int or None. Seed of the random draws.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> DropPath(0.1)(np.ones((4, 3, 2), "float32"), training=True)

    References:
        Huang et al., "Deep Networks with Stochastic Depth", 2016.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        draw = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.cast(draw < keep, inputs.dtype)
        return inputs * mask / ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
