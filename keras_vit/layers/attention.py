"""Single-head attention pooling: Nadaraya-Watson, additive and scaled dot-product.

All three share one call convention (Keras'): `layer(query, value, key=None,
attention_mask=None, valid_lens=None, use_causal_mask=False,
return_attention_scores=False, training=None)`. They differ only in how a
query is scored against a key, which subclasses define in `score`.
"""

import math

import keras
from keras import ops

from keras_vit.layers.masking import any_valid_key, masked_softmax, merge_masks
from keras_vit.layers.validation import (
    check_attention_inputs,
    check_positive_float,
    check_positive_int,
    check_rate,
)


class _AttentionPooling(keras.layers.Layer):
    """Shared body: mask, softmax in float32, dropout, weighted sum of values."""

    # Whether `score` needs queries and keys of one feature size.
    same_query_key_features = False

    def __init__(self, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = check_rate("dropout", dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def score(self, query, key):
        """Attention scores `(B, Tq, Tk)` for queries `(B, Tq, Dq)` and keys `(B, Tk, Dk)`."""
        raise NotImplementedError

    def check_inputs(self, query, value, key, attention_mask=None, valid_lens=None):
        """ValueError naming the argument when static shapes do not fit (see validation.py)."""
        check_attention_inputs(query, value, key, attention_mask, valid_lens,
                               same_query_key_features=self.same_query_key_features)

    def call(self, query, value, key=None, attention_mask=None, valid_lens=None,
             use_causal_mask=False, return_attention_scores=False, training=None):
        key = value if key is None else key
        self.check_inputs(query, value, key, attention_mask, valid_lens)
        mask = merge_masks(ops.shape(query)[1], ops.shape(key)[1], attention_mask,
                           valid_lens, use_causal_mask)
        weights = masked_softmax(self.score(query, key), mask)
        weights = ops.cast(weights, self.compute_dtype)
        output = ops.matmul(self.dropout_layer(weights, training=training), value)
        if return_attention_scores:
            return output, weights
        return output

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (value_shape[-1],)

    def compute_output_spec(self, query, value, key=None, return_attention_scores=False,
                            attention_mask=None, valid_lens=None, **kwargs):
        key = value if key is None else key
        self.check_inputs(query, value, key, attention_mask, valid_lens)
        output = keras.KerasTensor(self.compute_output_shape(query.shape, value.shape),
                                   dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        scores_shape = (query.shape[0], query.shape[1], key.shape[1])
        return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class NadarayaWatsonAttention(_AttentionPooling):
    """Nadaraya-Watson kernel regression as attention pooling.

    `f(x) = sum_i softmax_i(-1/2 ((x - x_i) w)^2) y_i`: a Gaussian kernel of
    bandwidth `1/w` weighs each key `x_i` by its distance to the query `x`.
    With `w` fixed at 1 this is the non-parametric estimator; with
    `trainable_bandwidth=True` it is the parametric one, learning `w`.
    Queries and keys are vectors `(B, T, D)` of one size `D`; use `D = 1` for scalars.

    Args:
        trainable_bandwidth: bool. Whether `w` is learned. Defaults to `False`.
        initial_bandwidth: float > 0. Initial (or fixed) value of `w`.
            Defaults to `1.0`.
        dropout: float in [0, 1). Dropout on the attention weights during
            training. Defaults to `0.0`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> x_train = np.sort(np.random.rand(1, 50, 1) * 5, axis=1)
    >>> y_train = 2 * np.sin(x_train) + x_train ** 0.8
    >>> x_test = np.arange(0, 5, 0.1).reshape(1, -1, 1)
    >>> y_hat = NadarayaWatsonAttention()(x_test, y_train, key=x_train)  # (1, 50, 1)

    References:
        Nadaraya (1964); Watson (1964); Zhang et al., Dive into Deep Learning, 11.2.
    """

    same_query_key_features = True

    def __init__(self, trainable_bandwidth=False, initial_bandwidth=1.0, dropout=0.0, **kwargs):
        super().__init__(dropout=dropout, **kwargs)
        self.trainable_bandwidth = bool(trainable_bandwidth)
        self.initial_bandwidth = check_positive_float("initial_bandwidth", initial_bandwidth)

    def build(self, query_shape, value_shape, key_shape=None):
        self.bandwidth = self.add_weight(
            name="bandwidth", shape=(),
            initializer=keras.initializers.Constant(self.initial_bandwidth),
            trainable=self.trainable_bandwidth,
        )

    def score(self, query, key):
        # ||q - k||^2 = |q|^2 - 2 q.k + |k|^2 avoids a (B, Tq, Tk, D) difference tensor.
        query = ops.cast(query, "float32")
        key = ops.cast(key, "float32")
        squared = (ops.sum(query * query, axis=-1)[:, :, None]
                   - 2.0 * ops.matmul(query, ops.swapaxes(key, -1, -2))
                   + ops.sum(key * key, axis=-1)[:, None, :])
        squared = ops.maximum(squared, 0.0)  # round-off can make it slightly negative
        bandwidth = ops.cast(self.bandwidth, "float32")
        return -0.5 * squared * bandwidth * bandwidth

    def get_config(self):
        config = super().get_config()
        config.update({"trainable_bandwidth": self.trainable_bandwidth,
                       "initial_bandwidth": self.initial_bandwidth})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class AdditiveAttention(_AttentionPooling):
    """Additive (Bahdanau) attention: `a(q, k) = v^T tanh(W_q q + W_k k)`.

    Queries and keys may have different feature sizes since both are projected
    to `units` first.

    Args:
        units: int > 0. Size of the hidden projection.
        dropout: float in [0, 1). Dropout on the attention weights during
            training. Defaults to `0.0`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> layer = AdditiveAttention(units=8)
    >>> out = layer(np.ones((2, 1, 20)), np.ones((2, 10, 4)), key=np.ones((2, 10, 2)))
    >>> out.shape  # (2, 1, 4)

    References:
        Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning
        to Align and Translate", 2014.
    """

    def __init__(self, units, dropout=0.0, **kwargs):
        super().__init__(dropout=dropout, **kwargs)
        self.units = check_positive_int("units", units)
        dense = dict(use_bias=False, dtype=self.dtype_policy)
        self.query_dense = keras.layers.Dense(self.units, name="query_dense", **dense)
        self.key_dense = keras.layers.Dense(self.units, name="key_dense", **dense)
        self.score_dense = keras.layers.Dense(1, name="score_dense", **dense)

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.score_dense.build(tuple(query_shape[:-1]) + (self.units,))

    def score(self, query, key):
        # (B, Tq, 1, U) + (B, 1, Tk, U) broadcasts every query against every key.
        features = ops.tanh(ops.expand_dims(self.query_dense(query), 2)
                            + ops.expand_dims(self.key_dense(key), 1))
        return ops.squeeze(self.score_dense(features), -1)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class ScaledDotProductAttention(_AttentionPooling):
    """Scaled dot-product attention: `a(q, k) = q . k / sqrt(d)`.

    Without requested scores, without dropout, with values as wide as the
    keys, outside float16 and on a backend with a fused kernel (not
    TensorFlow) it takes the fused `keras.ops.dot_product_attention` path;
    otherwise the explicit one (same result, see `fused_attention_supports`).

    Args:
        dropout: float in [0, 1). Dropout on the attention weights during
            training. Defaults to `0.0`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> q, k, v = np.ones((2, 1, 2)), np.ones((2, 10, 2)), np.ones((2, 10, 4))
    >>> ScaledDotProductAttention()(q, v, key=k, valid_lens=np.array([2, 6])).shape

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
    """

    same_query_key_features = True

    def score(self, query, key):
        scale = 1.0 / math.sqrt(query.shape[-1])
        return ops.matmul(query * ops.cast(scale, query.dtype), ops.swapaxes(key, -1, -2))

    def call(self, query, value, key=None, attention_mask=None, valid_lens=None,
             use_causal_mask=False, return_attention_scores=False, training=None):
        key = value if key is None else key
        self.check_inputs(query, value, key, attention_mask, valid_lens)
        fused = (not return_attention_scores and not (self.dropout > 0 and training)
                 and fused_attention_supports(key.shape[-1], value.shape[-1], self.compute_dtype))
        if not fused:
            return super().call(query, value, key, attention_mask, valid_lens,
                                use_causal_mask, return_attention_scores, training)
        mask = merge_masks(ops.shape(query)[1], ops.shape(key)[1], attention_mask,
                           valid_lens, use_causal_mask)
        return fused_attention(query[:, :, None, :], key[:, :, None, :], value[:, :, None, :],
                               mask, scale=1.0 / math.sqrt(query.shape[-1]))[:, :, 0, :]


def fused_attention_supports(key_dim, value_dim, dtype):
    """Whether to take :func:`fused_attention` for these sizes and dtype on this backend.

    `jax.nn.dot_product_attention` needs `key_dim == value_dim`, and under
    `jit` on CPU it asks XLA for a float16 dot with float32 accumulation,
    which XLA's CPU `dot_general` rejects; the explicit path gives the same
    result in those cases. TensorFlow has no fused kernel: Keras'
    `dot_product_attention` there is the explicit arithmetic written with
    other einsums, which forward+backward at ViT-Ti/16 shapes took 1.36x the
    explicit path's time as a float32 graph, 1.34x in bfloat16 and 1.18x
    under XLA (bfloat16 under XLA: 1.0x; 2-core Zen 5, benchmarks/README.md,
    `attention`), so TensorFlow always takes the explicit path.
    """
    return (keras.backend.backend() != "tensorflow" and key_dim == value_dim
            and keras.backend.standardize_dtype(dtype) != "float16")


def fused_attention(query, key, value, mask, scale):
    """`ops.dot_product_attention` on `(B, T, H, D)` tensors; fully masked queries give zero rows.

    Args:
        query: `(B, Tq, H, D)` tensor.
        key: `(B, Tk, H, D)` tensor.
        value: `(B, Tk, H, Dv)` tensor.
        mask: optional boolean mask broadcastable to `(B, Tq, Tk)`.
        scale: float. Multiplier of the logits.

    Returns:
        `(B, Tq, H, Dv)` attention output.
    """
    if mask is None:
        return ops.dot_product_attention(query, key, value, scale=scale)
    mask = ops.cast(mask, "bool")
    while len(mask.shape) < 3:
        mask = ops.expand_dims(mask, 0)
    full_mask = ops.broadcast_to(mask, (ops.shape(query)[0], ops.shape(query)[1],
                                        ops.shape(key)[1]))
    output = ops.dot_product_attention(query, key, value, mask=full_mask[:, None, :, :],
                                       scale=scale)
    # The fused kernel spreads a fully masked row uniformly; we define it as zero.
    keep = ops.cast(any_valid_key(full_mask), output.dtype)  # (B, Tq, 1)
    return output * keep[:, :, :, None]
