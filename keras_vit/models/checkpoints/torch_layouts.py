"""PyTorch tensor layouts (Hugging Face, timm) -> our Keras variable layouts.

`nn.Linear` weights are `(out, in)`: kernels are their transpose. Attention
projections are split into heads along their output axis (`(D, H, Dh)`) and
the output projection along its input axis (`(H, Dh, D)`). `nn.Conv2d`
weights `(D, C, kh, kw)` become `(kh, kw, C, D)`.
"""

import numpy as np

from keras_vit.models.checkpoints.architecture import Entry, block_paths, copy, zeros


def linear_kernel(key):
    return Entry((key,), lambda w: w.T)


def conv_kernel(key):
    return Entry((key,), lambda w: np.transpose(w, (2, 3, 1, 0)))


def head_split_kernel(key, heads, rows=slice(None)):
    """`(out, in)` projection (rows `rows` of a fused one) -> `(D, H, Dh)`."""
    return Entry((key,), lambda w: w[rows].T.reshape(w.shape[1], heads, -1))


def head_split_bias(key, heads, rows=slice(None)):
    return Entry((key,), lambda b: b[rows].reshape(heads, -1))


def output_kernel(key, heads):
    """`(D, H * Dh)` output projection -> `(H, Dh, D)`."""
    return Entry((key,), lambda w: w.T.reshape(heads, -1, w.shape[0]))


def block_entries(index, arch, names):
    """Entries of block `index` from PyTorch names.

    Args:
        names: dict with `"qkv"` (a fused `(3D, D)` projection prefix) or
            `"query"`, `"key"`, `"value"` (separate prefixes), and `"out"`,
            `"norm1"`, `"norm2"`, `"fc1"`, `"fc2"`: module names without
            `.weight`/`.bias`.
    """
    ours, heads, width = block_paths(index), arch.num_heads, arch.hidden_dim
    entries = {}
    for position, name in enumerate(("query", "key", "value")):
        rows = slice(position * width, (position + 1) * width) if "qkv" in names else slice(None)
        prefix = names.get("qkv", names.get(name))
        entries[ours[f"{name}_kernel"]] = head_split_kernel(f"{prefix}.weight", heads, rows)
        entries[ours[f"{name}_bias"]] = (head_split_bias(f"{prefix}.bias", heads, rows)
                                         if arch.qkv_bias else zeros((heads, width // heads)))
    entries[ours["out_kernel"]] = output_kernel(f"{names['out']}.weight", heads)
    entries[ours["out_bias"]] = copy(f"{names['out']}.bias")
    for norm in ("norm1", "norm2"):
        entries[ours[f"{norm}_gamma"]] = copy(f"{names[norm]}.weight")
        entries[ours[f"{norm}_beta"]] = copy(f"{names[norm]}.bias")
    for fc in ("fc1", "fc2"):
        entries[ours[f"{fc}_kernel"]] = linear_kernel(f"{names[fc]}.weight")
        entries[ours[f"{fc}_bias"]] = copy(f"{names[fc]}.bias")
    return entries


def dense_entries(ours, theirs):
    """A `nn.Linear` named `theirs` into our Dense layer `ours`."""
    return {f"{ours}/kernel": linear_kernel(f"{theirs}.weight"),
            f"{ours}/bias": copy(f"{theirs}.bias")}


def norm_entries(ours, theirs):
    return {f"{ours}/gamma": copy(f"{theirs}.weight"), f"{ours}/beta": copy(f"{theirs}.bias")}
