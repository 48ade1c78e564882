"""Hugging Face `transformers` ViT directories: `config.json` + `model.safetensors`.

Keys are `vit.`-prefixed in `ViTForImageClassification` and unprefixed in
`ViTModel`. The architecture comes from `config.json`; input normalisation from
`preprocessor_config.json` (`image_mean`, `image_std`) when present. The
pooler of `ViTModel` (`pooler.dense`) is not used, as in
`ViTForImageClassification` and keras-hub; `embeddings.mask_token` (masked
image modelling) is not used either.
"""

import json
import pathlib

from keras_vit.models.checkpoints.architecture import Architecture, copy
from keras_vit.models.checkpoints.sources import CheckpointError, SafetensorsSource
from keras_vit.models.checkpoints.torch_layouts import (
    block_entries,
    conv_kernel,
    dense_entries,
    norm_entries,
)

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.mask_token")


def is_hugging_face_dir(path):
    config = pathlib.Path(path) / "config.json"
    return config.is_file() and "model_type" in _json(config)


def _json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {str(path)!r} as JSON: {error}") from error


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _normalisation(directory):
    processor = directory / "preprocessor_config.json"
    if not processor.is_file():
        return None, None
    config = _json(processor)
    if not config.get("do_normalize", True):
        return (0.0,), (1.0,)
    return tuple(config["image_mean"]), tuple(config["image_std"])


def open_directory(path):
    """`(source, architecture, prefix)` of a Hugging Face ViT directory."""
    directory = pathlib.Path(path)
    config = _json(directory / "config.json")
    if config.get("model_type") != "vit":
        raise CheckpointError(f"{str(directory)!r}: model_type={config.get('model_type')!r} is "
                              "not a ViT (expected 'vit')")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{str(directory)!r} has no model.safetensors (PyTorch .bin files "
                              "are not read: convert them with `safetensors` first)")
    source = SafetensorsSource(weights)
    prefix = "vit." if "vit.embeddings.cls_token" in source.keys() else ""
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{str(directory)!r}: hidden_act={act!r} is not supported; "
                              f"expected one of {sorted(ACTIVATIONS)}")
    patch, image = _pair(config["patch_size"]), _pair(config["image_size"])
    if image[0] % patch[0] or image[1] % patch[1]:
        raise CheckpointError(f"config.json: image_size={image} is not divisible by "
                              f"patch_size={patch}")
    mean, std = _normalisation(directory)
    classifier = "classifier.weight" in source.keys()
    arch = Architecture(
        hidden_dim=config["hidden_size"], depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
        patch_size=patch, grid=(image[0] // patch[0], image[1] // patch[1]),
        channels=config.get("num_channels", 3),
        num_classes=source.shape("classifier.weight")[0] if classifier else None,
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12), mlp_activation=ACTIVATIONS[act],
        qkv_bias=config.get("qkv_bias", True), mean=mean, std=std, position_prefix=1,
    )
    return source, arch, prefix


def plan(arch, prefix):
    """`{our variable path: Entry}` for a Hugging Face ViT with this architecture."""
    embeddings = f"{prefix}embeddings"
    entries = {
        "patch_embedding/projection/kernel":
            conv_kernel(f"{embeddings}.patch_embeddings.projection.weight"),
        "patch_embedding/projection/bias": copy(f"{embeddings}.patch_embeddings.projection.bias"),
        "class_token/token": copy(f"{embeddings}.cls_token"),
        "position_embedding/embedding": copy(f"{embeddings}.position_embeddings"),
        **norm_entries("encoder_norm", f"{prefix}layernorm"),
        **dense_entries("head", "classifier"),
    }
    for index in range(arch.depth):
        layer = f"{prefix}encoder.layer.{index}"
        attention = f"{layer}.attention"
        entries.update(block_entries(index, arch, {
            "query": f"{attention}.attention.query", "key": f"{attention}.attention.key",
            "value": f"{attention}.attention.value", "out": f"{attention}.output.dense",
            "norm1": f"{layer}.layernorm_before", "norm2": f"{layer}.layernorm_after",
            "fc1": f"{layer}.intermediate.dense", "fc2": f"{layer}.output.dense",
        }))
    return entries


def unused_keys(prefix):
    return {prefix + key for key in _UNUSED}
