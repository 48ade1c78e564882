"""Sequence-to-vector pooling of Transformer tokens."""

import keras
from keras import ops

from keras_vit.layers.validation import check_non_negative_int, check_rank

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
        self.mode = mode
        self.num_prefix_tokens = check_non_negative_int("num_prefix_tokens", num_prefix_tokens)

    def _check_shape(self, shape):
        """Rank 3, and (when the length is static) at least one token to pool."""
        check_rank("tokens", shape, 3)
        needed = 1 if self.mode == "token" else self.num_prefix_tokens + 1
        if shape[1] is not None and shape[1] < needed:
            raise ValueError(f"TokenPooling(mode={self.mode!r}, num_prefix_tokens="
                             f"{self.num_prefix_tokens}) needs at least {needed} tokens; "
                             f"received `tokens` of shape {tuple(shape)}")

    def build(self, input_shape):
        self._check_shape(input_shape)

    def call(self, tokens):
        self._check_shape(tokens.shape)
        if self.mode == "token":
            return tokens[:, 0]
        # Average in float32: bf16 sums over hundreds of tokens lose digits.
        mean = ops.mean(ops.cast(tokens[:, self.num_prefix_tokens:], "float32"), axis=1)
        return ops.cast(mean, tokens.dtype)

    def compute_output_shape(self, input_shape):
        self._check_shape(input_shape)
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config
