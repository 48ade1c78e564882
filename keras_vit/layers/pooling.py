"""Sequence-to-vector pooling of Transformer tokens."""

import keras
from keras import ops

POOLING_MODES = ("token", "gap")


@keras.saving.register_keras_serializable(package="keras_vit")
class TokenPooling(keras.layers.Layer):
    """Pools `(B, T, d)` tokens to `(B, d)`: the class token, or the mean of the others.

    Args:
        mode: `"token"` takes token 0 (the class token); `"gap"` averages the
            tokens after the first `num_prefix_tokens`.
        num_prefix_tokens: int >= 0. Leading non-patch tokens (class token)
            that `"gap"` skips. Defaults to 0.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> TokenPooling("gap")(np.ones((2, 197, 64), "float32")).shape  # (2, 64)
    """

    def __init__(self, mode="token", num_prefix_tokens=0, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"`mode` must be one of {POOLING_MODES}; received mode={mode!r}")
        if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError("`num_prefix_tokens` must be an int >= 0; received "
                             f"num_prefix_tokens={num_prefix_tokens!r}")
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens

    def call(self, tokens):
        if self.mode == "token":
            return tokens[:, 0]
        # Average in float32: bf16 sums over hundreds of tokens lose digits.
        mean = ops.mean(ops.cast(tokens[:, self.num_prefix_tokens:], "float32"), axis=1)
        return ops.cast(mean, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config
