"""keras-hub `ViTBackbone` / `ViTImageClassifier` objects and local keras-hub preset folders.

keras-hub's variables already have Keras layouts (`(D, H, Dh)` attention
kernels, `(kh, kw, C, D)` conv); its position table is `(tokens, D)`. The
input normalisation is the classifier's image converter (`x * scale + offset`),
when it has one.
"""

import json
import pathlib

import numpy as np

from keras_vit.models.checkpoints.architecture import Architecture, Entry, block_paths, copy, zeros
from keras_vit.models.checkpoints.sources import CheckpointError, VariableSource

_EMBEDDING = "vit_patching_and_embedding"


def is_keras_hub_model(obj):
    return type(obj).__module__.startswith("keras_hub") and hasattr(obj, "weights")


def is_keras_hub_preset(path):
    config = pathlib.Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "keras_hub" in str(json.loads(config.read_text()).get("registered_name", ""))
    except (OSError, ValueError):
        return False


def load_preset(path):
    """The keras-hub task (when the preset has one) or backbone stored in a local preset folder."""
    import keras_hub

    directory = pathlib.Path(path)
    if (directory / "task.json").is_file():
        return keras_hub.models.ImageClassifier.from_preset(str(directory))
    return keras_hub.models.Backbone.from_preset(str(directory))


def _split(model):
    """`(backbone, classifier or None)`."""
    import keras_hub

    if isinstance(model, keras_hub.models.ViTImageClassifier):
        return model.backbone, model
    if isinstance(model, keras_hub.models.ViTBackbone):
        return model, None
    raise CheckpointError(f"{type(model).__name__} is not a keras-hub ViTBackbone or "
                          "ViTImageClassifier")


def _normalisation(classifier):
    converter = getattr(getattr(classifier, "preprocessor", None), "image_converter", None)
    if converter is None or converter.scale is None:
        return None, None
    scale = np.atleast_1d(np.asarray(converter.scale, "float64"))
    offset = np.atleast_1d(np.asarray(0.0 if converter.offset is None else converter.offset,
                                      "float64"))
    std = 1.0 / (255.0 * scale)  # (x / 255 - mean) / std == x * scale + offset
    return tuple(float(v) for v in -offset * std), tuple(float(v) for v in std)


def open_model(model):
    """`(source, architecture)` of a keras-hub ViT object."""
    backbone, classifier = _split(model)
    config = backbone.get_config()
    pooling = "token" if classifier is None else classifier.pooling
    if pooling == "gap" and config["use_class_token"]:
        raise CheckpointError("keras-hub pooling='gap' with a class token averages the class "
                              "token too; keras_vit's average pooling skips it: not supported")
    patch = tuple(config["patch_size"])
    height, width, channels = config["image_shape"]
    mean, std = _normalisation(classifier) if classifier is not None else (None, None)
    arch = Architecture(
        hidden_dim=config["hidden_dim"], depth=config["num_layers"],
        num_heads=config["num_heads"], mlp_dim=config["mlp_dim"], patch_size=patch,
        grid=(height // patch[0], width // patch[1]), channels=channels,
        class_token=config["use_class_token"], pooling=pooling,
        representation_size=getattr(classifier, "intermediate_dim", None),
        num_classes=getattr(classifier, "num_classes", None),
        layer_norm_epsilon=config["layer_norm_epsilon"], qkv_bias=config["use_mha_bias"],
        mean=mean, std=std, position_prefix=int(config["use_class_token"]),
    )
    if config.get("data_format", "channels_last") != "channels_last":
        raise CheckpointError("keras-hub ViT with data_format='channels_first' is not supported")
    extra = dict(mlp_bias=config["use_mlp_bias"], patch_bias=config["use_patch_bias"])
    return VariableSource(model), arch, extra


def _maybe(path, present, shape):
    return copy(path) if present else zeros(shape)


def plan(arch, mlp_bias=True, patch_bias=True):
    """`{our variable path: Entry}` for keras-hub variable paths."""
    width, heads = arch.hidden_dim, arch.num_heads
    entries = {
        "patch_embedding/projection/kernel": copy(f"{_EMBEDDING}/patch_embedding/kernel"),
        "patch_embedding/projection/bias": _maybe(f"{_EMBEDDING}/patch_embedding/bias",
                                                  patch_bias, (width,)),
        "class_token/token": copy(f"{_EMBEDDING}/class_token"),
        "position_embedding/embedding": Entry(
            (f"{_EMBEDDING}/position_embedding/embeddings",), lambda table: table[None]),
        "encoder_norm/gamma": copy("vit_encoder/ln/gamma"),
        "encoder_norm/beta": copy("vit_encoder/ln/beta"),
        "pre_logits/kernel": copy("pre_logits/kernel"),
        "pre_logits/bias": copy("pre_logits/bias"),
        "head/kernel": copy("predictions/kernel"),
        "head/bias": copy("predictions/bias"),
    }
    for index in range(arch.depth):
        ours, theirs = block_paths(index), f"vit_encoder/transformer_block_{index + 1}"
        for name in ("query", "key", "value"):
            entries[ours[f"{name}_kernel"]] = copy(f"{theirs}/mha/{name}/kernel")
            entries[ours[f"{name}_bias"]] = _maybe(f"{theirs}/mha/{name}/bias", arch.qkv_bias,
                                                   (heads, width // heads))
        entries[ours["out_kernel"]] = copy(f"{theirs}/mha/attention_output/kernel")
        entries[ours["out_bias"]] = _maybe(f"{theirs}/mha/attention_output/bias", arch.qkv_bias,
                                           (width,))
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            entries[ours[f"{norm}_gamma"]] = copy(f"{theirs}/{ln}/gamma")
            entries[ours[f"{norm}_beta"]] = copy(f"{theirs}/{ln}/beta")
        for fc, dense, size in (("fc1", "dense_1", arch.mlp_dim), ("fc2", "dense_2", width)):
            entries[ours[f"{fc}_kernel"]] = copy(f"{theirs}/mlp/{dense}/kernel")
            entries[ours[f"{fc}_bias"]] = _maybe(f"{theirs}/mlp/{dense}/bias", mlp_bias, (size,))
    return entries
