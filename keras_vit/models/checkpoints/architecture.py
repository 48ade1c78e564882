"""What a checkpoint holds (`Architecture`) and how its tensors map onto our model (`Entry`)."""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from keras_vit.models.checkpoints.sources import CheckpointError


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A checkpoint's ViT, as read from its config or tensor shapes.

    `grid` is the patch grid its position embedding was trained on, and
    `position_prefix` the number of prefix rows in that embedding (0 for timm's
    `no_embed_class` models, whose class token gets no position). `mean`/`std`
    are `None` when the format does not say.
    """

    hidden_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: tuple
    grid: tuple
    channels: int
    class_token: bool = True
    distillation_token: bool = False
    pooling: str = "token"
    fc_norm: bool = False
    representation_size: int | None = None
    num_classes: int | None = None
    layer_norm_epsilon: float = 1e-6
    mlp_activation: str = "gelu"
    qkv_bias: bool = True
    mean: tuple | None = None
    std: tuple | None = None
    position_prefix: int | None = None

    @property
    def num_prefix_tokens(self):
        return int(self.class_token) + int(self.distillation_token)

    @property
    def image_shape(self):
        return (self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1],
                self.channels)

    def head_dim(self):
        if self.hidden_dim % self.num_heads:
            raise CheckpointError(f"width {self.hidden_dim} is not divisible by "
                                  f"num_heads={self.num_heads}")
        return self.hidden_dim // self.num_heads


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model variable's value: `convert(*[source.read(k) for k in keys])`."""

    keys: tuple
    convert: Callable = lambda array: array


def copy(key):
    return Entry((key,))


def zeros(shape):
    """A variable the format does not store because it is zero (e.g. no qkv bias)."""
    return Entry((), lambda: np.zeros(shape, "float32"))


def square_grid(num_positions, name):
    """`(n, n)` for `n * n == num_positions`, else an error asking for the image size."""
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise CheckpointError(f"{name} has {num_positions} grid positions, not a square grid; "
                              "the checkpoint's config must give its image size")
    return side, side


def grid_from_positions(num_positions, num_prefix, name):
    """The grid and prefix-row count of a position table with `num_positions` rows.

    Tries `num_prefix` prefix rows first, then none (timm's `no_embed_class`).
    """
    for prefix in dict.fromkeys((num_prefix, 0)):
        side = math.isqrt(max(num_positions - prefix, 0))
        if side and side * side == num_positions - prefix:
            return (side, side), prefix
    raise CheckpointError(f"{name} has {num_positions} rows: not {num_prefix} prefix rows plus "
                          "a square grid; the checkpoint's config must give its image size")


def block_paths(index):
    """Our variable paths in encoder block `index`."""
    base = f"encoder_block_{index}"
    paths = {f"{name}_{part}": f"{base}/attention/{name}/{part}"
             for name in ("query", "key", "value") for part in ("kernel", "bias")}
    paths.update({
        "out_kernel": f"{base}/attention/attention_output/kernel",
        "out_bias": f"{base}/attention/attention_output/bias",
        "norm1_gamma": f"{base}/norm1/gamma", "norm1_beta": f"{base}/norm1/beta",
        "norm2_gamma": f"{base}/norm2/gamma", "norm2_beta": f"{base}/norm2/beta",
        "fc1_kernel": f"{base}/mlp/dense1/kernel", "fc1_bias": f"{base}/mlp/dense1/bias",
        "fc2_kernel": f"{base}/mlp/dense2/kernel", "fc2_bias": f"{base}/mlp/dense2/bias",
    })
    return paths


HEAD_PATHS = ("head/kernel", "head/bias", "head_distillation/kernel", "head_distillation/bias")
