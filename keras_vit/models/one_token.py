"""The decoder's arithmetic for one new token, on weights read once before the loop.

A decoding loop runs the decoder on a single token per step. On small models
the cost of such a step is per-op overhead, not FLOPs: going through the
layers (`EinsumDense` on `(B, 1, D)`, Keras' layer norm, reading every
variable, oneDNN batched matmuls and softmax for a single query) made a step
of 2 decoder blocks 378 graph ops and ~1.9 ms of op time at batch 1. Here the
weights are read, cast to the compute dtype, reshaped to 2-D and fused
(self-attention query/key/value in one matrix, the attention scale folded
into the query projection) *once* per decode call (`read_block`), and a step
is matmuls on `(B, D)` rows plus cheap elementwise ops: ~200 ops, ~0.5 ms
(see benchmarks/README.md, "decoding").

The values are those of the layers (`TransformerDecoderBlock`,
`MultiHeadAttention`, `LayerNormalization`, `PositionWiseFeedForward`) up to
float rounding; tests/test_decoding.py checks every step against the full
model. Mixed precision follows the layers: matmuls in the compute dtype,
layer norm and softmax in float32.

Self-attention cache layout, per block: `(B, L, 2 * H * key_dim)`, keys then
values of each position, as the fused projection gives them. Everything is `keras.ops`.
"""

import collections

import keras
from keras import ops

from keras_vit.layers.multi_head_attention import dense_matrix

#: Added to the attention scores of keys a query may not see: exp() gives exactly 0.
MASKED = -1e9

BlockWeights = collections.namedtuple("BlockWeights", [
    "norm_first", "heads", "key_dim", "qkv", "self_out", "cross_query", "cross_out",
    "norms", "mlp_in", "mlp_out", "activation"])
Dense = collections.namedtuple("Dense", ["kernel", "bias"])
Norm = collections.namedtuple("Norm", ["gamma", "beta", "epsilon", "dtype"])


def cast_to(x, dtype):
    """`x` in `dtype`, with no cast op when it already is."""
    if keras.backend.standardize_dtype(x.dtype) == keras.backend.standardize_dtype(dtype):
        return x
    return ops.cast(x, dtype)


def _variable(value, dtype):
    """A weight's value, read now (`copy`: not lazily inside the decoding loop)."""
    return cast_to(ops.copy(value), dtype)


def _check_plain(layer):
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(f"cached decoding does not support quantized layers; {layer.name!r} "
                         f"is quantized ({layer.quantization_mode})")


def _dense(layer, dtype, scale=None):
    """`Dense` or `EinsumDense` as a 2-D `(kernel (D_in, D_out), bias (1, D_out) or None)`.

    The bias is a row, not a vector: TensorFlow's oneDNN graph rewrite fuses
    a matmul and the add of a 1-D bias into one `_MklNativeFusedMatMul`,
    which on a single token's `(B, D)` rows costs more than the plain matmul
    and add it replaces (a chain of `(1, 64) @ (64, 64)` + bias: 16 against
    11.5 us per link, Zen 3); the add of a `(1, D_out)` row is left alone.
    At batch 1 with oneDNN on, decoding 10-40 tokens took 4-33 % less time
    (benchmarks/README.md, session 21); same values.
    """
    _check_plain(layer)
    kernel, bias = dense_matrix(layer, dtype, scale)  # scaled as the layer's own call does
    return Dense(_variable(kernel, dtype),
                 None if bias is None else _variable(ops.reshape(bias, (1, -1)), dtype))


def read_norm(layer):
    """A `LayerNormalization`'s float32 `gamma`, `beta`, its epsilon and output dtype."""
    if layer.rms_scaling or list(layer.axis) != [-1]:
        raise ValueError(f"cached decoding needs a plain last-axis layer norm; {layer.name!r} "
                         f"has axis={layer.axis!r}, rms_scaling={layer.rms_scaling!r}")
    gamma = None if layer.gamma is None else _variable(layer.gamma, "float32")
    beta = None if layer.beta is None else _variable(layer.beta, "float32")
    return Norm(gamma, beta, layer.epsilon, layer.compute_dtype)


def layer_norm(x, norm):
    """Keras' `LayerNormalization` over the last axis, in float32, back in its dtype."""
    x = cast_to(x, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    inverse = ops.rsqrt(ops.mean(ops.square(centred), axis=-1, keepdims=True) + norm.epsilon)
    if norm.gamma is not None:
        inverse = inverse * norm.gamma
    out = centred * inverse
    return cast_to(out if norm.beta is None else out + norm.beta, norm.dtype)


def _affine(x, dense):
    y = ops.matmul(x, dense.kernel)
    return y if dense.bias is None else y + dense.bias


def _concat_dense(parts):
    kernel = ops.concatenate([p.kernel for p in parts], axis=-1)
    if any(p.bias is None for p in parts):
        return Dense(kernel, None)
    return Dense(kernel, ops.concatenate([p.bias for p in parts], axis=-1))


def read_block(block):
    """`BlockWeights` of a built `TransformerDecoderBlock`, in its compute dtype."""
    dtype = block.compute_dtype
    attention, cross = block.self_attention, block.cross_attention
    if attention.value_dim != attention.key_dim:
        raise ValueError("a key/value cache needs value_dim == key_dim; received "
                         f"key_dim={attention.key_dim}, value_dim={attention.value_dim}")
    # As the layers' call: 1/sqrt(key_dim) folded into the query kernel and bias.
    qkv = _concat_dense([_dense(attention.query_dense, dtype, attention.query_scale),
                         _dense(attention.key_dense, dtype), _dense(attention.value_dense, dtype)])
    mlp = block.mlp
    return BlockWeights(
        norm_first=block.norm_first, heads=attention.num_heads, key_dim=attention.key_dim,
        qkv=qkv, self_out=_dense(attention.output_dense, dtype),
        cross_query=_dense(cross.query_dense, dtype, cross.query_scale),
        cross_out=_dense(cross.output_dense, dtype),
        norms=(read_norm(block.norm1), read_norm(block.norm2), read_norm(block.norm3)),
        mlp_in=_dense(mlp.dense1, dtype), mlp_out=_dense(mlp.dense2, dtype),
        activation=mlp.dense1.activation)


def read_output_projection(embedding):
    """`(kernel (D, V), dtype)` of `ReversibleEmbedding(x, reverse=True)`, as the layer casts it."""
    _check_plain(embedding)
    if getattr(embedding, "logit_soft_cap", None) is not None:
        raise ValueError("cached decoding does not support logit_soft_cap; "
                         f"{embedding.name!r} has {embedding.logit_soft_cap}")
    kernel = (ops.transpose(embedding.embeddings) if embedding.tie_weights
              else ops.copy(embedding.reverse_embeddings))
    # As in the layer: the variable autocast to the compute dtype, then to reverse_dtype.
    kernel = cast_to(kernel, embedding.compute_dtype)
    reverse_dtype = getattr(embedding, "reverse_dtype", None)
    return Dense(kernel if reverse_dtype is None else cast_to(kernel, reverse_dtype), None)


def output_logits(x, output):
    """float32 `(B, V)` logits of the decoder's last hidden state `x` `(B, D)`."""
    return cast_to(ops.matmul(cast_to(x, output.kernel.dtype), output.kernel), "float32")


def cross_keys_values(block, memory, memory_mask):
    """Cross-attention `(keys, values)` of `memory`, each `(B, S, H, key_dim)`.

    Values of a batch row whose mask hides every source position are zeroed:
    the layer gives such a query a zero attention output, and so does any
    softmax times zero values.
    """
    attention = block.cross_attention
    keys, values = attention.key_dense(memory), attention.value_dense(memory)
    if memory_mask is not None:
        any_visible = ops.any(ops.cast(memory_mask, "bool"), axis=-1)  # (B, 1)
        values = values * ops.cast(any_visible, values.dtype)[:, :, None, None]
    return keys, values


def memory_bias(memory_mask):
    """`(B, S, 1)` float32: 0 where the memory may be attended, `MASKED` elsewhere."""
    if memory_mask is None:
        return None
    visible = ops.cast(memory_mask, "bool")[:, 0, :, None]
    return ops.where(visible, 0.0, MASKED)


def _softmax_over_keys(scores):
    """Softmax over axis 1 of float32 `(B, L, H)` scores.

    Spelt out: with one query per head the tensors are tiny, and these five
    elementwise/reduce ops cost a few microseconds where the fused softmax
    (oneDNN on CPU) costs tens.
    """
    exp = ops.exp(scores - ops.max(scores, axis=1, keepdims=True))
    return exp / ops.sum(exp, axis=1, keepdims=True)


def _attend(query, keys, values, bias, dtype):
    """One query per head: `(B, 1, H, dk)` against `(B, L, H, dk)` keys/values -> `(B, H, dk)`.

    Multiply-and-sum rather than batched matmuls: a single query is a
    matrix-vector product (no reuse for a matmul kernel to exploit), and
    oneDNN's batched matmul costs ~100 us per call at these shapes.
    """
    scores = cast_to(ops.sum(query * keys, axis=-1), "float32")  # (B, L, H)
    if bias is not None:
        scores = scores + bias
    weights = cast_to(_softmax_over_keys(scores), dtype)
    return ops.sum(weights[..., None] * values, axis=1)


def _residual(weights, index, x, sublayer):
    norm = weights.norms[index]
    if weights.norm_first:
        return x + sublayer(layer_norm(x, norm))
    return layer_norm(x + sublayer(x), norm)


def block_step(weights, x, cache, write, causal, cross, cross_bias):
    """One decoder block on one token per row.

    Args:
        weights: `BlockWeights`.
        x: `(B, D)` the block's input at the current position.
        cache: `(B, L, 2 * H * dk)` self-attention keys then values so far.
        write: `(write, keep)`, each `(L, 1)` in the compute dtype: 1 and 0 at
            the current position, 0 and 1 elsewhere.
        causal: `(L, 1)` float32 bias, `MASKED` after the current position.
        cross: `(keys, values)` from `cross_keys_values`.
        cross_bias: `(B, S, 1)` from `memory_bias`, or None.

    Returns:
        `(x (B, D), cache)`.
    """
    dtype = x.dtype
    state = {}
    width = weights.heads * weights.key_dim

    def self_attend(h):
        qkv = _affine(h, weights.qkv)
        # cache * keep + new * write, not a select: TensorFlow's broadcasting select
        # costs ~50 us here, the multiplies ~2 us; exact, as keep and write are 0/1.
        state["cache"] = cache * write[1] + qkv[:, None, width:] * write[0]
        keys, values = ops.unstack(ops.reshape(state["cache"], (-1, cache.shape[1], 2,
                                                                weights.heads, weights.key_dim)),
                                   2, axis=2)
        query = ops.reshape(qkv[:, :width], (-1, 1, weights.heads, weights.key_dim))
        out = _attend(query, keys, values, causal, dtype)
        return _affine(ops.reshape(out, (-1, width)), weights.self_out)

    def cross_attend(h):
        query = ops.reshape(_affine(h, weights.cross_query),
                            (-1, 1, weights.heads, weights.key_dim))
        out = _attend(query, cross[0], cross[1], cross_bias, dtype)
        return _affine(ops.reshape(out, (-1, width)), weights.cross_out)

    def mlp(h):
        return _affine(weights.activation(_affine(h, weights.mlp_in)), weights.mlp_out)

    x = _residual(weights, 0, x, self_attend)
    x = _residual(weights, 1, x, cross_attend)
    return _residual(weights, 2, x, mlp), state["cache"]
