"""timm `VisionTransformer` state dicts saved as `.safetensors`.

The attention projection is fused (`attn.qkv`, `(3D, D)`: query, key, value
rows in that order). Heads are not in any tensor's shape: they come from the
`num_heads` argument, or from a timm `config.json` beside the file
(`model_args.num_heads`, or the width-named architecture, e.g.
`vit_base_patch16_224` -> 12). Pooling comes from the config's `global_pool`,
else from the tensors: an `fc_norm` means `global_pool="avg"`, no class token
means average pooling, otherwise the class token. timm stores no input
normalisation in the weights: it comes from the config's `pretrained_cfg`
(`mean`, `std`) or the `mean`/`std` arguments. DeiT distilled checkpoints
(`dist_token`, `head_dist`) keep both prefix tokens and average both heads.
"""

import json
import pathlib
import re

from keras_vit.models.checkpoints.architecture import (
    Architecture,
    copy,
    grid_from_positions,
)
from keras_vit.models.checkpoints.sources import CheckpointError, SafetensorsSource
from keras_vit.models.checkpoints.torch_layouts import (
    block_entries,
    conv_kernel,
    dense_entries,
    norm_entries,
)

# Heads of timm's width-named ViT/DeiT sizes (timm/models/vision_transformer.py, deit.py).
HEADS_BY_SIZE = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def is_timm_state_dict(keys):
    return "patch_embed.proj.weight" in keys


def read_config(path):
    """The timm `config.json` beside `path` (a file or its directory), or `{}`."""
    path = pathlib.Path(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {str(config)!r} as JSON: {error}") from error
    return data if "architecture" in data else {}


def _heads(config, num_heads, width, description):
    from_config = config.get("model_args", {}).get("num_heads")
    if from_config is None and config.get("architecture"):
        size = re.match(r"^(?:vit|deit3?)_([a-z]+)_", config["architecture"])
        from_config = HEADS_BY_SIZE.get(size.group(1)) if size else None
    if num_heads is not None and from_config is not None and num_heads != from_config:
        raise CheckpointError(f"num_heads={num_heads} contradicts the config's {from_config}")
    heads = num_heads if num_heads is not None else from_config
    if heads is None:
        raise CheckpointError(
            f"{description}: a timm state dict does not record its number of attention heads; "
            "pass num_heads= (e.g. 12 for ViT-B) or put timm's config.json beside the file")
    if width % heads:
        raise CheckpointError(f"num_heads={heads} does not divide the width {width}")
    return heads


def _pooling(config, keys):
    pool = config.get("global_pool")
    if pool in (None, ""):
        pool = "avg" if "fc_norm.weight" in keys or "cls_token" not in keys else "token"
    if pool not in ("token", "avg"):
        raise CheckpointError(f"timm global_pool={pool!r} is not supported; expected "
                              "'token' or 'avg'")
    return "token" if pool == "token" else "gap"


def _grid(config, source, num_prefix):
    """The checkpoint's grid and the prefix rows of its `pos_embed`."""
    rows = source.shape("pos_embed")[1]
    input_size = config.get("pretrained_cfg", {}).get("input_size")
    if input_size:
        height, width = input_size[-2:]
        patch = source.shape("patch_embed.proj.weight")[-2:]
        grid = (height // patch[0], width // patch[1])
        prefix = rows - grid[0] * grid[1]
        if prefix not in (0, num_prefix):
            raise CheckpointError(f"pos_embed has {rows} rows; input_size={input_size} gives "
                                  f"a {grid} grid and {num_prefix} prefix tokens")
        return grid, prefix
    return grid_from_positions(rows, num_prefix, "pos_embed")


def open_file(path, num_heads=None):
    """`(source, architecture)` of a timm `.safetensors` state dict."""
    source = SafetensorsSource(path)
    keys, config = source.keys(), read_config(path)
    if not is_timm_state_dict(keys):
        raise CheckpointError(f"{source.description}: no 'patch_embed.proj.weight'; not a timm "
                              "ViT state dict")
    width, channels, patch_h, patch_w = source.shape("patch_embed.proj.weight")
    depth = len({int(m.group(1)) for m in map(_BLOCK.match, keys) if m})
    num_prefix = int("cls_token" in keys) + int("dist_token" in keys)
    grid, prefix = _grid(config, source, num_prefix)
    cfg = config.get("pretrained_cfg", {})
    pre_logits = "pre_logits.fc.weight" in keys
    return source, Architecture(
        hidden_dim=width, depth=depth, num_heads=_heads(config, num_heads, width,
                                                        source.description),
        mlp_dim=source.shape("blocks.0.mlp.fc1.weight")[0], patch_size=(patch_h, patch_w),
        grid=grid, channels=channels, class_token="cls_token" in keys,
        distillation_token="dist_token" in keys, pooling=_pooling(config, keys),
        fc_norm="fc_norm.weight" in keys,
        representation_size=source.shape("pre_logits.fc.weight")[0] if pre_logits else None,
        num_classes=source.shape("head.weight")[0] if "head.weight" in keys else None,
        layer_norm_epsilon=1e-6, mlp_activation="gelu",
        qkv_bias="blocks.0.attn.qkv.bias" in keys,
        mean=tuple(cfg["mean"]) if "mean" in cfg else None,
        std=tuple(cfg["std"]) if "std" in cfg else None, position_prefix=prefix,
    )


def plan(arch):
    """`{our variable path: Entry}` for a timm state dict with this architecture."""
    entries = {
        "patch_embedding/projection/kernel": conv_kernel("patch_embed.proj.weight"),
        "patch_embedding/projection/bias": copy("patch_embed.proj.bias"),
        "class_token/token": copy("cls_token"),
        "distillation_token/token": copy("dist_token"),
        "position_embedding/embedding": copy("pos_embed"),
        **norm_entries("fc_norm" if arch.fc_norm else "encoder_norm",
                       "fc_norm" if arch.fc_norm else "norm"),
        **dense_entries("pre_logits", "pre_logits.fc"),
        **dense_entries("head", "head"),
        **dense_entries("head_distillation", "head_dist"),
    }
    for index in range(arch.depth):
        block = f"blocks.{index}"
        entries.update(block_entries(index, arch, {
            "qkv": f"{block}.attn.qkv", "out": f"{block}.attn.proj",
            "norm1": f"{block}.norm1", "norm2": f"{block}.norm2",
            "fc1": f"{block}.mlp.fc1", "fc2": f"{block}.mlp.fc2",
        }))
    return entries
