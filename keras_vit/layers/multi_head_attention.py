"""Multi-head attention, a drop-in for `keras.layers.MultiHeadAttention`."""

import math

import keras
from keras import ops

from keras_vit.layers.attention import fused_attention, fused_attention_supports
from keras_vit.layers.masking import causal_mask, masked_softmax, merge_masks
from keras_vit.layers.updates import write_slice
from keras_vit.layers.validation import (
    check_attention_inputs,
    check_broadcastable,
    check_cache_index,
    check_positive_int,
    check_rate,
    static_shape,
)


def dense_matrix(layer, dtype, scale=None):
    """A `Dense` or `EinsumDense` layer's weights as a 2-D matmul: `(kernel, bias or None)`.

    `kernel` is `(D_in, D_out)`: a `(D, H, d)` input-projection kernel becomes
    `(D, H * d)`, a `(H, d, E)` output-projection kernel (equation `abcd,...`)
    `(H * d, E)`; `bias` is flattened to `(D_out,)`. Both in `dtype`.

    Args:
        layer: a built, unquantized `keras.layers.Dense` or `EinsumDense`.
        dtype: the dtype to cast to (the compute dtype).
        scale: optional float multiplying kernel and bias (in the variables'
            dtype, before the cast): the layer's output times `scale`.

    Example:
    >>> kernel, bias = dense_matrix(mha.query_dense, "float32")  # (D, H * key_dim), (H * key_dim,)
    """
    kernel, bias = layer.kernel, getattr(layer, "bias", None)
    if scale is not None:
        kernel = kernel * scale
        bias = None if bias is None else bias * scale
    kernel = ops.cast(kernel, dtype)
    heads_in = len(kernel.shape) == 3 and getattr(layer, "equation", "").startswith("abcd")
    rows = kernel.shape[0] * kernel.shape[1] if heads_in else kernel.shape[0]
    return (ops.reshape(kernel, (rows, -1)),
            None if bias is None else ops.reshape(ops.cast(bias, dtype), (-1,)))


@keras.saving.register_keras_serializable(package="keras_vit")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention over `(batch, length, features)` inputs.

    Weights have the names, shapes and order of `keras.layers.MultiHeadAttention`
    (query, key, value, output; kernel then bias), so
    `ours.set_weights(theirs.get_weights())` reproduces Keras' outputs. It adds
    `valid_lens` masks, zero output for fully masked queries, and step-by-step
    decoding with a key/value cache (`call_with_cache`).

    Args:
        num_heads: int > 0. Number of attention heads.
        key_dim: int > 0. Size of each head for query and key.
        value_dim: int > 0 or None. Size of each head for value. Defaults to `key_dim`.
        dropout: float in [0, 1). Dropout on the attention weights during training.
        use_bias: bool. Whether the projections have biases. Defaults to `True`.
        output_shape: int or None. Output feature size. Defaults to the query's.
        kernel_initializer: initializer for the projection kernels.
        bias_initializer: initializer for the projection biases.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        query: `(B, Tq, Dq)`. value: `(B, Tk, Dv)`. key: `(B, Tk, Dk)`, defaults to `value`.
        attention_mask: boolean `(B, Tq, Tk)`, `True` = may attend.
        valid_lens: int `(B,)` or `(B, Tq)`: keys at positions `>= valid_len` are masked.
        use_causal_mask: bool. Mask keys after each query's position.
        return_attention_scores: bool. Also return the weights `(B, H, Tq, Tk)`.
        training: bool. Enables dropout.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> out, scores = mha(x, x, use_causal_mask=True, return_attention_scores=True)
    >>> out.shape, scores.shape  # (2, 5, 8), (2, 2, 5, 5)

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
    """

    def __init__(self, num_heads, key_dim=None, value_dim=None, dropout=0.0, use_bias=True,
                 output_shape=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if key_dim is None:
            raise ValueError("`key_dim` is required: the size of each attention head; "
                             "received key_dim=None")
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.value_dim = (self.key_dim if value_dim is None
                          else check_positive_int("value_dim", value_dim))
        self.dropout = check_rate("dropout", dropout)
        self.use_bias = bool(use_bias)
        if isinstance(output_shape, (tuple, list)):
            if len(output_shape) != 1:
                raise ValueError("`output_shape` must be an int or a 1-tuple; "
                                 f"received output_shape={output_shape!r}")
            output_shape = output_shape[0]
        self.output_dim = (None if output_shape is None
                           else check_positive_int("output_shape", output_shape))
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _projection(self, name, heads_dim):
        return keras.layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, self.num_heads, heads_dim),
            bias_axes="de" if self.use_bias else None, name=name, dtype=self.dtype_policy,
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()),
            bias_initializer=self.bias_initializer.__class__.from_config(
                self.bias_initializer.get_config()),
        )

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) != 3:
                raise ValueError(f"`{name}` must have shape (batch, length, features); "
                                 f"received shape {tuple(shape)}")
        output_dim = self.output_dim or query_shape[-1]
        # Creation order = weight order = keras.layers.MultiHeadAttention's.
        self.query_dense = self._projection("query", self.key_dim)
        self.query_dense.build(query_shape)
        self.key_dense = self._projection("key", self.key_dim)
        self.key_dense.build(key_shape)
        self.value_dense = self._projection("value", self.value_dim)
        self.value_dense.build(value_shape)
        self.output_dense = keras.layers.EinsumDense(
            "abcd,cde->abe", output_shape=(None, output_dim),
            bias_axes="e" if self.use_bias else None, name="attention_output",
            dtype=self.dtype_policy,
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()),
            bias_initializer=self.bias_initializer.__class__.from_config(
                self.bias_initializer.get_config()),
        )
        self.output_dense.build((None, None, self.num_heads, self.value_dim))

    def project(self, dense, inputs, scale=None):
        """`dense(inputs)` (times `scale`) for one of the four projections, as a 2-D matmul.

        The `EinsumDense` layers hold the weights (Keras' names and shapes);
        the arithmetic runs on `(B * T, features)` rows against the kernel
        reshaped to 2-D. Same values, but on TensorFlow the einsum becomes a
        batched matmul of `(B, T, D)` by a broadcast kernel whose kernel
        gradient is `B` small matmuls plus a sum over the batch; as rows it
        is one matmul (benchmarks/README.md, "attention"). Quantized or LoRA
        layers keep their own call.

        Args:
            dense: `self.query_dense`, `key_dense`, `value_dense` or `output_dense`.
            inputs: `(B, T, D)` for the input projections, `(B, T, H, dv)` for the output.
            scale: optional float multiplying the projection, applied to the
                kernel and bias (`D x H*d` values) rather than to every
                `(B, T, H, d)` output: `call` folds the attention's
                `1 / sqrt(key_dim)` into the query projection this way.

        Returns:
            `(B, T, H, head_dim)`, or `(B, T, output_dim)` for the output projection.
        """
        if dense.quantization_mode is not None or dense.lora_enabled:
            outputs = dense(inputs)
            return outputs if scale is None else outputs * ops.cast(scale, outputs.dtype)
        kernel, bias = dense_matrix(dense, self.compute_dtype, scale)
        shape = ops.shape(inputs)
        rows = ops.matmul(ops.reshape(inputs, (-1, kernel.shape[0])), kernel)
        if bias is not None:
            # ops.add of a 1-D bias is TensorFlow's BiasAdd, which oneDNN fuses
            # with the matmul (about 1 % of a ViT-Ti/16 step, float32; AddV2
            # does not fuse). Not in bfloat16: BiasAdd's CPU gradient sums
            # bfloat16 in bfloat16 (keras_vit.layers.bias); AddV2's is accurate.
            rows = rows + bias if self.compute_dtype == "bfloat16" else ops.add(rows, bias)
        heads_in = dense is self.output_dense
        out_shape = tuple(dense.kernel.shape[-1:] if heads_in else dense.kernel.shape[1:])
        return ops.reshape(rows, (shape[0], shape[1], *out_shape))

    def attend(self, query, key, value, mask=None, return_attention_scores=False,
               training=None, scale=None):
        """Attention on projected heads: `(B, Tq, H, dk)`, `(B, Tk, H, dk)`, `(B, Tk, H, dv)`.

        Returns `(B, Tq, H, dv)` and the weights `(B, H, Tq, Tk)` (or None when
        not requested, which allows the fused kernel where it is supported).
        `scale` multiplies the logits: None is `1 / sqrt(key_dim)`; `call`
        passes 1.0 for queries projected with that factor already.
        """
        scale = self.query_scale if scale is None else scale
        use_dropout = self.dropout > 0 and bool(training)
        if (not return_attention_scores and not use_dropout
                and fused_attention_supports(self.key_dim, self.value_dim, self.compute_dtype)):
            return fused_attention(query, key, value, mask, scale), None
        if scale != 1.0:
            query = query * ops.cast(scale, query.dtype)
        scores = ops.einsum("bthd,bshd->bhts", query, key)
        weights = ops.cast(masked_softmax(scores, mask), self.compute_dtype)
        output = ops.einsum("bhts,bshd->bthd", self.dropout_layer(weights, training=training),
                            value)
        return output, weights

    def call(self, query, value, key=None, attention_mask=None, valid_lens=None,
             use_causal_mask=False, return_attention_scores=False, training=None):
        key = value if key is None else key
        check_attention_inputs(query, value, key, attention_mask, valid_lens)
        mask = merge_masks(ops.shape(query)[1], ops.shape(key)[1], attention_mask,
                           valid_lens, use_causal_mask)
        output, weights = self.attend(self.project(self.query_dense, query, self.query_scale),
                                      self.project(self.key_dense, key),
                                      self.project(self.value_dense, value), mask,
                                      return_attention_scores, training, scale=1.0)
        output = self.project(self.output_dense, output)
        return (output, weights) if return_attention_scores else output

    @property
    def query_scale(self):
        """`1 / sqrt(key_dim)`: the factor of the attention logits."""
        return 1.0 / math.sqrt(self.key_dim)

    def init_cache(self, batch_size, max_length):
        """Zero key/value cache `(B, 2, max_length, H, key_dim)` for `call_with_cache`."""
        if self.value_dim != self.key_dim:
            raise ValueError("a key/value cache needs value_dim == key_dim; received "
                             f"key_dim={self.key_dim}, value_dim={self.value_dim}")
        return ops.zeros((batch_size, 2, max_length, self.num_heads, self.key_dim),
                         dtype=self.compute_dtype)

    def call_with_cache(self, query, cache, cache_update_index, attention_mask=None,
                        return_attention_scores=False, training=None):
        """Causal self-attention for new steps `query` `(B, s, D)` at `cache_update_index`.

        Projects the new steps, writes their keys and values into `cache` at
        `cache_update_index`, and lets each new step attend to every cached
        position up to its own. Returns `(output, new_cache)` (and weights when
        requested), equal to the matching rows of a full causal pass.

        Args:
            query: `(B, s, D)` new decoder inputs.
            cache: `(B, 2, max_length, H, key_dim)` from `init_cache` or a previous step.
            cache_update_index: int or scalar tensor. Position of `query[:, 0]`;
                an int must leave room for the steps (`index + s <= max_length`).
            attention_mask: optional extra boolean mask `(B, s, max_length)`.
            return_attention_scores: bool. Also return the weights.
            training: bool. Enables dropout.
        """
        check_cache_index(cache_update_index, query.shape[1], cache.shape[2])
        if attention_mask is not None:
            check_broadcastable("attention_mask", static_shape(attention_mask),
                                (query.shape[0], query.shape[1], cache.shape[2]),
                                "(batch, steps, max_length)")
        steps = ops.shape(query)[1]
        max_length = ops.shape(cache)[2]
        new_kv = ops.stack([self.project(self.key_dense, query),
                            self.project(self.value_dense, query)], axis=1)
        # Not ops.slice_update: on TensorFlow it is an XLA-only op TF Serving lacks.
        cache = write_slice(cache, cache_update_index, new_kv, axis=2)
        mask = causal_mask(steps, max_length, offset=cache_update_index)
        if attention_mask is not None:
            mask = ops.logical_and(mask, ops.cast(attention_mask, "bool"))
        output, weights = self.attend(self.project(self.query_dense, query, self.query_scale),
                                      cache[:, 0], cache[:, 1], mask, return_attention_scores,
                                      training, scale=1.0)
        output = self.project(self.output_dense, output)
        if return_attention_scores:
            return output, cache, weights
        return output, cache

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def compute_output_spec(self, query, value, key=None, return_attention_scores=False,
                            attention_mask=None, valid_lens=None, **kwargs):
        key = value if key is None else key
        check_attention_inputs(query, value, key, attention_mask, valid_lens)
        output = keras.KerasTensor(self.compute_output_shape(query.shape, value.shape, key.shape),
                                   dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        scores_shape = (query.shape[0], self.num_heads, query.shape[1], key.shape[1])
        return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "key_dim": self.key_dim, "value_dim": self.value_dim,
            "dropout": self.dropout, "use_bias": self.use_bias, "output_shape": self.output_dim,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        })
        return config
