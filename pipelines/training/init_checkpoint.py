"""`keras-vit train --init CHECKPOINT`: fine-tuning a published ViT checkpoint.

The architecture comes from the checkpoint (`keras_vit.models.open_checkpoint`
reads it from headers and configs, without the weights), so the flags that
would define another one are refused; `--num-heads` is kept and passed
through (a timm state dict without `config.json` needs it). The checkpoint is
checked twice before anything is written: before the data is read (file,
format, image size against the patch size) and once the data's channels are
known. The model itself is built by `keras_vit.models.load_checkpoint` where
the job builds models (under the strategy scope, after the dtype policy is
set): a new class count gets a zero-initialised head, the position embedding
is resampled to the new grid, the checkpoint's input normalisation is kept.

Example:
>>> config = with_checkpoint_image_size(TrainConfig(init="ViT-B_16.npz").resolved())
>>> config.image_size
(224, 224)
"""

import dataclasses

#: Options that define an architecture: with `--init` the checkpoint defines it.
ARCHITECTURE_OPTIONS = ("variant", "patch_size", "hidden_dim", "depth", "mlp_dim", "pooling",
                        "position_embedding")


def _as_flag(name):
    return "--" + name.replace("_", "-")


def check_init_options(config):
    """Refuses option combinations that `--init` / `--freeze-backbone` cannot honour.

    Args:
        config: a resolved `TrainConfig` (with `--init`, the preset leaves the
            architecture options unset, so any value set here was given).

    Raises:
        ValueError: one line naming the flags.

    Example:
    >>> check_init_options(TrainConfig(init="a.npz", depth=4).resolved())
    Traceback (most recent call last):
    ValueError: --init takes the architecture from the checkpoint: drop --depth 4 ...
    """
    if config.freeze_backbone and not config.init:
        raise ValueError("--freeze-backbone freezes a checkpoint's backbone: it needs "
                         "--init CHECKPOINT")
    if not config.init:
        return
    given = [f"{_as_flag(name)} {getattr(config, name)}" for name in ARCHITECTURE_OPTIONS
             if getattr(config, name) is not None]
    if given:
        raise ValueError(f"--init takes the architecture from the checkpoint: drop "
                         f"{', '.join(given)} (only --num-heads, --dropout, "
                         "--attention-dropout and --drop-path apply to it)")


def open_init_checkpoint(config, image_shape=None):
    """The checkpoint's `Architecture`, checked against `image_shape`; reads no weights.

    Args:
        config: a resolved `TrainConfig` with `init` set.
        image_shape: `(H, W)`, `(H, W, C)` or None (the checkpoint's own size).

    Returns:
        `keras_vit.models.checkpoints.architecture.Architecture`.

    Raises:
        ValueError: unreadable or foreign checkpoint, `--num-heads` contradicting
            it, a size its patch does not divide, other channels, or no input
            normalisation in the checkpoint; one line starting with `--init PATH`.
    """
    from keras_vit.models import open_checkpoint

    try:
        opened = open_checkpoint(config.init, num_heads=config.num_heads,
                                 image_shape=image_shape)
    except ValueError as error:
        raise ValueError(f"--init {config.init}: {error}") from None
    close = getattr(opened.source, "close", None)
    if close:
        close()
    arch = opened.architecture
    # load_checkpoint would stop on this only after the run folder is written.
    if arch.mean is None or arch.std is None:
        raise ValueError(f"--init {config.init}: the checkpoint carries no input "
                         "normalisation; pass the timm folder with its config.json, or convert "
                         "it with `keras-vit convert --mean ... --std ...` first")
    return arch


def with_checkpoint_image_size(config, arch=None):
    """`config` with `image_size` set to the checkpoint's when `--image-size` is not given.

    A checkpoint is fine-tuned at its own resolution unless told otherwise
    (the data is resized to it). Checks the checkpoint (`open_init_checkpoint`).

    Args:
        config: a resolved `TrainConfig` with `init` set.
        arch: the checkpoint's `Architecture`, when already opened.

    Returns:
        A `TrainConfig` with `image_size` an `(H, W)` tuple.
    """
    arch = arch or open_init_checkpoint(config, config.image_size)
    if config.image_size is not None:
        return config
    return dataclasses.replace(config, image_size=tuple(arch.image_shape[:2]))


def checkpoint_kwargs(config, info):
    """`load_checkpoint` arguments of a resolved `--init` config for the dataset `info`.

    No mean/std: the checkpoint's own normalisation is kept, since its
    weights were trained on inputs normalised that way.

    Example:
    >>> model = load_checkpoint(config.init, **checkpoint_kwargs(config, data.info))
    """
    return {"image_shape": tuple(info.image_shape), "num_classes": info.num_classes,
            "num_heads": config.num_heads, "dropout": config.dropout,
            "attention_dropout": config.attention_dropout, "drop_path": config.drop_path}


def checkpoint_model(config, kwargs):
    """The checkpoint as a model (`load_checkpoint`), frozen but for its head with
    `--freeze-backbone`; call under the strategy scope, compile afterwards.

    Args:
        config: a resolved `TrainConfig` with `init` set.
        kwargs: `checkpoint_kwargs(config, info)`.

    Returns:
        A functional `keras.Model` (a `vision_transformer`).
    """
    from keras_vit.models import freeze_backbone, load_checkpoint

    model = load_checkpoint(config.init, **kwargs)
    if config.freeze_backbone:
        freeze_backbone(model)  # Keras reads `trainable` when the model is compiled
    return model
