"""Transformer encoder and decoder blocks, pre-norm (ViT) or post-norm (original)."""

import keras
from keras import ops

from keras_vit.layers.feed_forward import DropPath, PositionWiseFeedForward
from keras_vit.layers.multi_head_attention import MultiHeadAttention
from keras_vit.layers.normalization import LayerNormalization
from keras_vit.layers.validation import (
    check_activation,
    check_cache_index,
    check_positive_float,
    check_positive_int,
    check_rate,
    is_int,
    numpy_int_as_int,
)


def _with_scores(result, return_attention_scores):
    """An attention call's result as `(output, weights or None)`."""
    return result if return_attention_scores else (result, None)


class _TransformerBlock(keras.layers.Layer):
    """Configuration, validation and residual wiring shared by both blocks."""

    def __init__(self, num_heads, mlp_dim, dropout=0.0, attention_dropout=0.0, drop_path=0.0,
                 norm_first=True, activation="gelu", epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        self.dropout = check_rate("dropout", dropout)
        self.attention_dropout = check_rate("attention_dropout", attention_dropout)
        self.drop_path = check_rate("drop_path", drop_path)
        self.norm_first = bool(norm_first)
        check_activation("activation", activation)  # an unknown name fails here, not at call
        self.activation = activation
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.drop_path_layer = DropPath(self.drop_path, dtype=self.dtype_policy)

    def _attention_layer(self, width, name):
        if width % self.num_heads:
            raise ValueError(f"the feature size {width} must be divisible by "
                             f"num_heads={self.num_heads}")
        return MultiHeadAttention(self.num_heads, width // self.num_heads,
                                  dropout=self.attention_dropout, name=name,
                                  dtype=self.dtype_policy)

    def _norm(self, name, shape):
        # Keras' layer (statistics in float32 under mixed precision) with a
        # written-out gradient (keras_vit.layers.normalization).
        norm = LayerNormalization(epsilon=self.epsilon, name=name, dtype=self.dtype_policy)
        norm.build(shape)
        return norm

    def _residual(self, x, norm, sublayer, training, num_kept=None):
        """`x + f(LN(x))` when pre-norm, `LN(x + f(x))` when post-norm.

        With `num_kept`, `sublayer` returns rows for the first `num_kept`
        tokens only, and so does the residual sum.
        """
        branch_input = norm(x) if self.norm_first else x
        branch, extra = sublayer(branch_input)
        branch = self.drop_path_layer(self.dropout_layer(branch, training=training),
                                      training=training)
        x = x if num_kept is None else x[:, :num_kept]
        out = x + branch if self.norm_first else norm(x + branch)
        return out, extra

    def _mlp_residual(self, x, training):
        out, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h, training=training), None),
                                training)
        return out

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
            "attention_dropout": self.attention_dropout, "drop_path": self.drop_path,
            "norm_first": self.norm_first, "activation": self.activation,
            "epsilon": self.epsilon,
        })
        return config


def _query_rows(attention_mask, valid_lens, kept):
    """The rows of the first `kept` queries: `(..., Tq, Tk)` masks and `(B, Tq)` lengths.

    One-axis masks (keys only) and `(B,)` lengths apply to every query and
    stay as they are; a size-1 query axis stays 1.
    """
    if attention_mask is not None:
        attention_mask = ops.convert_to_tensor(attention_mask)
        if len(attention_mask.shape) >= 2:
            attention_mask = attention_mask[..., :kept, :]
    if valid_lens is not None:
        valid_lens = ops.convert_to_tensor(valid_lens)
        if len(valid_lens.shape) == 2:
            valid_lens = valid_lens[:, :kept]
    return attention_mask, valid_lens


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerEncoderBlock(_TransformerBlock):
    """Self-attention then a position-wise MLP, each in a residual branch.

    Pre-norm (`norm_first=True`, ViT): `x += MHA(LN(x))`, `x += MLP(LN(x))`.
    Post-norm (original Transformer): `x = LN(x + MHA(x))`, `x = LN(x + MLP(x))`.

    Called with `num_output_tokens=n`, the block computes the outputs of the
    first `n` tokens only: they still attend to every token, but the other
    tokens' queries, attention outputs and MLP are skipped (`(B, n, d)` out,
    the same values as the first `n` rows of the full call). A ViT whose head
    reads only the class token needs no more from its last block.

    Args:
        num_heads: int > 0. Attention heads; must divide the feature size.
        mlp_dim: int > 0. Hidden width of the MLP.
        dropout: float in [0, 1). Dropout on each branch output and inside the MLP.
        attention_dropout: float in [0, 1). Dropout on the attention weights.
        drop_path: float in [0, 1). Stochastic-depth rate of both branches.
        norm_first: bool. Pre-norm when `True`. Defaults to `True`.
        activation: MLP activation. Defaults to `"gelu"`.
        epsilon: float > 0. Layer-norm epsilon. Defaults to `1e-6`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> block = TransformerEncoderBlock(num_heads=2, mlp_dim=32)
    >>> block(np.random.rand(2, 5, 16).astype("float32"), valid_lens=np.array([3, 5])).shape

    References:
        Vaswani et al., 2017; Dosovitskiy et al., 2020 (pre-norm ViT block).
    """

    def build(self, input_shape):
        width = input_shape[-1]
        self.attention = self._attention_layer(width, "attention")
        self.attention.build(input_shape, input_shape)
        self.norm1 = self._norm("norm1", input_shape)
        self.norm2 = self._norm("norm2", input_shape)
        self.mlp = PositionWiseFeedForward(self.mlp_dim, self.activation, self.dropout,
                                           name="mlp", dtype=self.dtype_policy)
        self.mlp.build(input_shape)
        self.mlp_norm = self.norm2

    def __call__(self, inputs, *args, **kwargs):
        # The token count sets a static shape: a numpy integer must reach `call` as an int.
        if "num_output_tokens" in kwargs:
            kwargs["num_output_tokens"] = numpy_int_as_int(kwargs["num_output_tokens"])
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, attention_mask=None, valid_lens=None, return_attention_scores=False,
             training=None, num_output_tokens=None):
        """Args (besides the inputs and masks of `MultiHeadAttention`):
            num_output_tokens: int or None. Compute only the first this many
                tokens' outputs (see the class docstring); `None`: all. Checked
                against a static sequence length; with a length known only at
                run time, a count above it gives every token.
        """
        kept = self._output_tokens(inputs.shape, num_output_tokens)
        if kept is not None:  # the kept queries' rows of per-query masks and lengths
            attention_mask, valid_lens = _query_rows(attention_mask, valid_lens, kept)

        def attend(h):
            query = h if kept is None else h[:, :kept]
            return _with_scores(self.attention(
                query, h, attention_mask=attention_mask, valid_lens=valid_lens,
                return_attention_scores=return_attention_scores, training=training),
                return_attention_scores)

        x, scores = self._residual(inputs, self.norm1, attend, training, kept)
        x = self._mlp_residual(x, training)
        return (x, scores) if return_attention_scores else x

    @staticmethod
    def _output_tokens(shape, num_output_tokens):
        """`num_output_tokens` checked against the input length; `None` when all are kept."""
        if num_output_tokens is None:
            return None
        kept = check_positive_int("num_output_tokens", num_output_tokens)
        if shape[1] is not None and kept > shape[1]:
            raise ValueError(f"num_output_tokens={kept} exceeds the {shape[1]} tokens of "
                             f"`inputs` (shape {tuple(shape)})")
        return None if kept == shape[1] else kept

    def compute_output_shape(self, input_shape, *args, num_output_tokens=None, **kwargs):
        kept = self._output_tokens(input_shape, num_output_tokens)
        return tuple(input_shape) if kept is None else (input_shape[0], kept, input_shape[-1])

    def compute_output_spec(self, inputs, return_attention_scores=False,
                            num_output_tokens=None, **kwargs):
        shape = self.compute_output_shape(inputs.shape, num_output_tokens=num_output_tokens)
        output = keras.KerasTensor(shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        scores = keras.KerasTensor((inputs.shape[0], self.num_heads, shape[1], inputs.shape[1]),
                                   dtype=self.compute_dtype)
        return output, scores


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerDecoderBlock(_TransformerBlock):
    """Causal self-attention, cross-attention over encoder outputs, then an MLP.

    Supports step-by-step decoding: `cache = block.init_cache(batch, max_length)`,
    then `out, cache = block(x_t, enc, self_attention_cache=cache,
    cache_update_index=t)` gives, step by step, the rows of a full causal pass.

    Args:
        num_heads: int > 0. Attention heads; must divide the feature size.
        mlp_dim: int > 0. Hidden width of the MLP.
        dropout: float in [0, 1). Dropout on each branch output and inside the MLP.
        attention_dropout: float in [0, 1). Dropout on the attention weights.
        drop_path: float in [0, 1). Stochastic-depth rate of every branch.
        norm_first: bool. Pre-norm when `True`; post-norm (the original
            Transformer) by default.
        activation: MLP activation. Defaults to `"relu"`.
        epsilon: float > 0. Layer-norm epsilon. Defaults to `1e-6`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> block = TransformerDecoderBlock(num_heads=2, mlp_dim=32)
    >>> enc = np.random.rand(2, 7, 16).astype("float32")
    >>> block(np.random.rand(2, 5, 16).astype("float32"), enc,
    ...       encoder_valid_lens=np.array([7, 4])).shape  # (2, 5, 16)

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, attention_dropout=0.0, drop_path=0.0,
                 norm_first=False, activation="relu", epsilon=1e-6, **kwargs):
        super().__init__(num_heads, mlp_dim, dropout, attention_dropout, drop_path, norm_first,
                         activation, epsilon, **kwargs)

    def build(self, inputs_shape, encoder_outputs_shape=None):
        input_shape = inputs_shape
        width = input_shape[-1]
        encoder_shape = input_shape if encoder_outputs_shape is None else encoder_outputs_shape
        self.self_attention = self._attention_layer(width, "self_attention")
        self.self_attention.build(input_shape, input_shape)
        self.cross_attention = self._attention_layer(width, "cross_attention")
        self.cross_attention.build(input_shape, encoder_shape)
        self.norm1 = self._norm("norm1", input_shape)
        self.norm2 = self._norm("norm2", input_shape)
        self.norm3 = self._norm("norm3", input_shape)
        self.mlp = PositionWiseFeedForward(self.mlp_dim, self.activation, self.dropout,
                                           name="mlp", dtype=self.dtype_policy)
        self.mlp.build(input_shape)
        self.mlp_norm = self.norm3

    def init_cache(self, batch_size, max_length):
        """Zero self-attention cache `(B, 2, max_length, num_heads, key_dim)`."""
        if not self.built:
            raise ValueError("build the block (call it once) before init_cache")
        return self.self_attention.init_cache(batch_size, max_length)

    def __call__(self, inputs, *args, **kwargs):
        # A numpy `cache_update_index` becomes a tensor before `call`, where its value
        # can no longer be checked: checked here (a tensor index passes unchecked).
        index = numpy_int_as_int(kwargs.get("cache_update_index"))
        cache = kwargs.get("self_attention_cache")
        if is_int(index) and cache is not None:
            check_cache_index(index, inputs.shape[1], cache.shape[2])
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, encoder_outputs, encoder_valid_lens=None, encoder_attention_mask=None,
             self_attention_mask=None, self_attention_cache=None, cache_update_index=None,
             return_attention_scores=False, training=None):
        if (self_attention_cache is None) != (cache_update_index is None):
            raise ValueError("`self_attention_cache` and `cache_update_index` go together")
        state = {"cache": self_attention_cache}

        def self_attend(h):
            if self_attention_cache is None:
                return _with_scores(self.self_attention(
                    h, h, attention_mask=self_attention_mask, use_causal_mask=True,
                    return_attention_scores=return_attention_scores, training=training),
                    return_attention_scores)
            result = self.self_attention.call_with_cache(
                h, self_attention_cache, cache_update_index, self_attention_mask,
                return_attention_scores, training)
            state["cache"] = result[1]
            return result[0], (result[2] if return_attention_scores else None)

        def cross_attend(h):
            return _with_scores(self.cross_attention(
                h, encoder_outputs, attention_mask=encoder_attention_mask,
                valid_lens=encoder_valid_lens, return_attention_scores=return_attention_scores,
                training=training), return_attention_scores)

        x, self_scores = self._residual(inputs, self.norm1, self_attend, training)
        x, cross_scores = self._residual(x, self.norm2, cross_attend, training)
        x = self._mlp_residual(x, training)
        outputs = (x,) if self_attention_cache is None else (x, state["cache"])
        if return_attention_scores:
            outputs += ({"self_attention": self_scores, "cross_attention": cross_scores},)
        return outputs[0] if len(outputs) == 1 else outputs
