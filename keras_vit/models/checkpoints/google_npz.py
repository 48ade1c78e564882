"""Google `vision_transformer` / AugReg / big_vision `.npz` checkpoints (Flax layouts).

Flax stores `Dense` kernels as `(in, out)`, attention kernels per head as
`(D, H, Dh)` (query/key/value) and `(H, Dh, D)` (out), and the patch conv as
`(kh, kw, C, D)`: exactly our variables' layouts, so tensors copy unchanged.
Inputs are scaled to [-1, 1] (mean = std = 0.5) and the MLP uses Flax's
tanh-approximated GELU.
"""

import re

from keras_vit.models.checkpoints.architecture import (
    Architecture,
    block_paths,
    copy,
    grid_from_positions,
)
from keras_vit.models.checkpoints.sources import CheckpointError

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_POSITIONS = ("Transformer/posembed_input/pos_embedding", "pos_embedding")  # ViT, big_vision


def is_google_npz(keys):
    return "embedding/kernel" in keys


def _depth(keys):
    indices = {int(m.group(1)) for m in map(_BLOCK.match, keys) if m}
    if not indices or indices != set(range(len(indices))):
        raise CheckpointError("npz checkpoint: expected Transformer/encoderblock_0.. "
                              f"encoderblock_N-1; found block indices {sorted(indices)}")
    return len(indices)


def read_architecture(source):
    keys = source.keys()
    position_key = next((k for k in _POSITIONS if k in keys), None)
    if position_key is None:
        raise CheckpointError(f"{source.description}: no position embedding; expected one of "
                              f"{list(_POSITIONS)}")
    patch_h, patch_w, channels, width = source.shape("embedding/kernel")
    attention = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
    _, heads, _ = source.shape(f"{attention}/query/kernel")
    class_token = "cls" in keys
    grid, prefix = grid_from_positions(source.shape(position_key)[1], int(class_token),
                                       position_key)
    head = source.shape("head/kernel")[1] if "head/kernel" in keys else None
    pre_logits = source.shape("pre_logits/kernel")[1] if "pre_logits/kernel" in keys else None
    return Architecture(
        hidden_dim=width, depth=_depth(keys), num_heads=heads,
        mlp_dim=source.shape("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel")[1],
        patch_size=(patch_h, patch_w), grid=grid, channels=channels,
        class_token=class_token, pooling="token" if class_token else "gap",
        representation_size=pre_logits, num_classes=head or None, layer_norm_epsilon=1e-6,
        mlp_activation="gelu_tanh", mean=(0.5,), std=(0.5,), position_prefix=prefix,
    ), position_key


def plan(arch, position_key):
    """`{our variable path: Entry}` for a Google npz with this architecture."""
    entries = {
        "patch_embedding/projection/kernel": copy("embedding/kernel"),
        "patch_embedding/projection/bias": copy("embedding/bias"),
        "position_embedding/embedding": copy(position_key),
        "encoder_norm/gamma": copy("Transformer/encoder_norm/scale"),
        "encoder_norm/beta": copy("Transformer/encoder_norm/bias"),
        "head/kernel": copy("head/kernel"),
        "head/bias": copy("head/bias"),
    }
    if arch.class_token:
        entries["class_token/token"] = copy("cls")
    if arch.representation_size:
        entries["pre_logits/kernel"] = copy("pre_logits/kernel")
        entries["pre_logits/bias"] = copy("pre_logits/bias")
    for index in range(arch.depth):
        base = f"Transformer/encoderblock_{index}"
        ours = block_paths(index)
        for name in ("query", "key", "value", "out"):  # Flax per-head layouts = ours
            for part in ("kernel", "bias"):
                entries[ours[f"{name}_{part}"]] = copy(
                    f"{base}/MultiHeadDotProductAttention_1/{name}/{part}")
        for norm, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            entries[ours[f"{norm}_gamma"]] = copy(f"{base}/{theirs}/scale")
            entries[ours[f"{norm}_beta"]] = copy(f"{base}/{theirs}/bias")
        for fc, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            entries[ours[f"{fc}_kernel"]] = copy(f"{base}/MlpBlock_3/{theirs}/kernel")
            entries[ours[f"{fc}_bias"]] = copy(f"{base}/MlpBlock_3/{theirs}/bias")
    return entries
