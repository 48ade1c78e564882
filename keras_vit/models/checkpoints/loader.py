"""`load_checkpoint`: a ViT checkpoint from any supported format as a `vision_transformer` model."""

import dataclasses
import pathlib

from keras_vit.layers import PatchEmbedding
from keras_vit.layers.validation import is_int
from keras_vit.models.checkpoints import google_npz, hugging_face, keras_hub_models, timm_state_dict
from keras_vit.models.checkpoints.architecture import Architecture
from keras_vit.models.checkpoints.sources import CheckpointError, NpzSource, SafetensorsSource
from keras_vit.models.checkpoints.weights import assign_weights
from keras_vit.models.vit import vision_transformer


@dataclasses.dataclass
class OpenedCheckpoint:
    """A checkpoint whose architecture is known and whose weights are not read yet."""

    source: object
    architecture: Architecture
    plan: dict
    unused: frozenset = frozenset()


def _open_path(path, num_heads):
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (local paths only: "
                              "nothing is downloaded)")
    if path.is_dir():
        if hugging_face.is_hugging_face_dir(path):
            source, arch, prefix = hugging_face.open_directory(path)
            return OpenedCheckpoint(source, arch, hugging_face.plan(arch, prefix),
                                    frozenset(hugging_face.unused_keys(prefix)))
        if keras_hub_models.is_keras_hub_preset(path):
            return _open_model(keras_hub_models.load_preset(path))
        if (path / "model.safetensors").is_file():  # a timm hub folder: config.json + weights
            return _open_path(path / "model.safetensors", num_heads)
        raise CheckpointError(f"{str(path)!r} is neither a Hugging Face ViT folder (config.json "
                              "with model_type), a keras-hub preset nor a timm folder")
    if path.suffix == ".npz":
        source = NpzSource(path)
        if not google_npz.is_google_npz(source.keys()):
            raise CheckpointError(f"{str(path)!r} has no 'embedding/kernel': not a Google ViT npz "
                                  f"(keys: {sorted(source.keys())[:5]})")
        arch, position_key = google_npz.read_architecture(source)
        return OpenedCheckpoint(source, arch, google_npz.plan(arch, position_key))
    if path.suffix == ".safetensors":
        keys = SafetensorsSource(path).keys()
        if any(k.startswith(("vit.", "embeddings.")) for k in keys):
            raise CheckpointError(f"{str(path)!r} holds Hugging Face names: pass its folder, with "
                                  "config.json, instead of the file")
        source, arch = timm_state_dict.open_file(path, num_heads)
        return OpenedCheckpoint(source, arch, timm_state_dict.plan(arch))
    raise CheckpointError(f"{str(path)!r}: unknown checkpoint format; expected a .npz file, a "
                          ".safetensors file (timm), a Hugging Face folder or a keras-hub preset")


def _open_model(model):
    source, arch, extra = keras_hub_models.open_model(model)
    return OpenedCheckpoint(source, arch, keras_hub_models.plan(arch, **extra))


def open_checkpoint(source, num_heads=None, image_shape=None):
    """Reads a checkpoint's architecture, not its weights, and checks `image_shape` against it.

    Cheap (file headers and configs only): a job can call it to reject a bad
    checkpoint or image size before it writes anything.

    Args:
        source: as in `load_checkpoint`.
        num_heads: int or None. As in `load_checkpoint`.
        image_shape: `(H, W)` or `(H, W, C)` or None. Checked against the patch
            size and channels.

    Returns:
        An `OpenedCheckpoint`; its `architecture` (an `Architecture`) describes the ViT.

    Example:
    >>> open_checkpoint("ViT-B_16.npz", image_shape=(384, 384)).architecture.num_heads  # 12
    """
    if num_heads is not None and (not is_int(num_heads) or num_heads <= 0):
        raise CheckpointError(f"num_heads must be a positive integer; received {num_heads!r}")
    if keras_hub_models.is_keras_hub_model(source):
        opened = _open_model(source)
    else:
        try:
            opened = _open_path(source, num_heads)
        except KeyError as error:  # a config or tensor the format always has
            raise CheckpointError(f"{str(source)!r}: expected entry {error} is missing: "
                                  "truncated or not a ViT checkpoint") from error
    if num_heads is not None and num_heads != opened.architecture.num_heads:
        raise CheckpointError(f"num_heads={num_heads} contradicts the checkpoint's "
                              f"{opened.architecture.num_heads} heads")
    _target_image_shape(opened.architecture, image_shape)
    return opened


def _target_image_shape(arch, image_shape):
    """The model's image shape, checked against the patch size before any weight is read."""
    if image_shape is None:
        return arch.image_shape
    shape = tuple(int(v) for v in image_shape)
    if len(shape) == 2:
        shape += (arch.channels,)
    if len(shape) != 3 or shape[2] != arch.channels:
        raise ValueError(f"image_shape={tuple(image_shape)!r}: expected (height, width) or "
                         f"(height, width, {arch.channels}) for this {arch.channels}-channel "
                         "checkpoint")
    PatchEmbedding(arch.patch_size, arch.hidden_dim).grid_size(shape)  # raises if not divisible
    return shape


def _head(arch, num_classes, include_top):
    """`(classes of the model, whether the checkpoint's head is loaded)`."""
    if not include_top:
        return 1, False
    if num_classes is None:
        if arch.num_classes is None:
            raise CheckpointError("the checkpoint has no classification head: pass num_classes= "
                                  "for a new zero-initialised head, or include_top=False")
        return arch.num_classes, True
    return num_classes, num_classes == arch.num_classes


def _normalisation(arch, mean, std):
    mean = arch.mean if mean is None else mean
    std = arch.std if std is None else std
    if mean is None or std is None:
        raise CheckpointError("this checkpoint carries no input normalisation: pass mean= and "
                              "std= in [0, 1] units (ImageNet: mean=(0.485, 0.456, 0.406), "
                              "std=(0.229, 0.224, 0.225); Inception/Google: 0.5, 0.5)")
    single = lambda v: v[0] if isinstance(v, (tuple, list)) and len(v) == 1 else v  # noqa: E731
    return single(mean), single(std)


def build_model(arch, image_shape, num_classes, include_top, mean, std, dtype, name=None,
                **regularisation):
    """A `vision_transformer` with the checkpoint's architecture (fresh weights)."""
    return vision_transformer(
        "B", image_shape=image_shape, num_classes=num_classes, patch_size=arch.patch_size,
        hidden_dim=arch.hidden_dim, depth=arch.depth, mlp_dim=arch.mlp_dim,
        num_heads=arch.num_heads, pooling=arch.pooling, class_token=arch.class_token,
        distillation_token=arch.distillation_token, fc_norm=arch.fc_norm,
        representation_size=arch.representation_size, mean=mean, std=std,
        include_top=include_top, layer_norm_epsilon=arch.layer_norm_epsilon,
        mlp_activation=arch.mlp_activation, dtype=dtype, name=name, **regularisation)


def load_checkpoint(source, *, image_shape=None, num_classes=None, include_top=True, mean=None,
                    std=None, dtype=None, num_heads=None, name=None, dropout=0.0,
                    attention_dropout=0.0, drop_path=0.0):
    """A `vision_transformer` model holding a published ViT checkpoint's weights.

    The architecture (width, depth, heads, MLP width, patch size, class token
    or average pooling with its norm, DeiT distillation token, pre-logits,
    qkv bias, layer-norm epsilon, GELU form, input normalisation) is read from
    the checkpoint's config or tensor shapes. A different image size resamples
    the position embedding (`resample_position_embedding`, bicubic). The model
    takes raw [0, 255] pixels: the format's normalisation is inside it.

    Args:
        source: a Google `.npz`; a Hugging Face ViT folder (`config.json` +
            `model.safetensors`); a timm `.safetensors` state dict (or its folder
            with timm's `config.json`); a keras-hub `ViTBackbone` /
            `ViTImageClassifier` or local preset folder. Local only: nothing
            is downloaded.
        image_shape: `(H, W)` or `(H, W, C)`; defaults to the checkpoint's. Must
            be divisible by the patch size (checked before reading weights).
        num_classes: int. Defaults to the checkpoint's head; a different count
            gets a new zero-initialised head (the ViT paper's fine-tuning head).
        include_top: bool. `False` returns float32 pooled features.
        mean, std: float or per-channel, in [0, 1] units. Override the format's
            normalisation; required for timm state dicts without a config.
        dtype: dtype policy of the model's layers (e.g. `"mixed_bfloat16"`).
        num_heads: int. Attention heads, needed for a timm state dict without
            `config.json`; checked against the checkpoint otherwise.
        name: str. Model name.
        dropout, attention_dropout, drop_path: float in [0, 1). Regularisation
            for fine-tuning, as in `vision_transformer` (no weights involved).

    Returns:
        A functional `keras.Model` from `vision_transformer`.

    Raises:
        CheckpointError (a ValueError): unknown or truncated file; missing or
            unexpected tensors (named); a tensor whose shape does not fit.
        ValueError: an image size the patch size does not divide.

    Example:
    >>> model = load_checkpoint("ViT-B_16.npz", image_shape=(384, 384), num_classes=10)
    >>> model.predict(images_0_to_255).shape  # (N, 10)
    """
    opened = open_checkpoint(source, num_heads)
    arch = opened.architecture
    image_shape = _target_image_shape(arch, image_shape)
    classes, load_head = _head(arch, num_classes, include_top)
    mean, std = _normalisation(arch, mean, std)
    model = build_model(arch, image_shape, classes, include_top, mean, std, dtype, name,
                        dropout=dropout, attention_dropout=attention_dropout,
                        drop_path=drop_path)
    try:
        assign_weights(model, opened, load_head)
    finally:
        opened.source.close()
    return model
