"""Training presets: the digits one, and one scaled to any other data's size (pure functions).

`scaled_preset(image_shape, num_train)` chooses the options a user leaves
unset for data without a named preset, from the image size, the channels and
the number of training images, so that a folder of a few thousand small
images trains in minutes on a 2-core CPU. The rules:

* patch grid: the largest patch side `p` <= `MAX_PATCH` dividing both image
  sides that still cuts at least `MIN_TOKENS` (a 4x4 grid) patches: 2 for
  8x8, 7 for 28x28, 8 for 32x32, 16 for 64x64 and larger (96x96: 36 tokens,
  224x224: 196). Few tokens keep attention cheap; the 4x4 grid is the digits
  preset's, which reaches ~98.9 % on 8x8 digits;
* model: width 64 / depth 4 up to `SMALL_DATA` training images, 128 / 6 up to
  `MEDIUM_DATA`, 192 / 8 beyond; 4 heads up to width 128, 64-wide heads
  above; MLP twice the width; average pooling. Small data overfits a wide
  model long before it fills it;
* peak learning rate 3e-3 at width 64, scaled by 64 / width (1e-3 at 192);
* batch 128, halved (down to 16) until an epoch has at least 16 steps;
* epochs: as many as fit `FIT_BUDGET_SECONDS` of planned fit time, clipped to
  [`MIN_EPOCHS`, `MAX_EPOCHS`]. Planned time = training FLOPs of all images
  seen (forward x 3) plus the validation passes, at `PLANNING_FLOP_RATE`
  (measured: small ViTs train at 20-30 GFLOP/s on this project's 2 shared
  cores in bf16 with XLA), plus `EPOCH_OVERHEAD_SECONDS` per epoch
  (checkpoint, backup, validation set-up). The budget leaves the job room
  for start-up, compilation, evaluation and a loaded machine within 10
  minutes (measured in README.md, "Your own data");
* small images (both sides <= `SMALL_IMAGE_SIDE`): `affine` augmentation
  (rotation/zoom and shift, no flip: safe for symbols and scenes alike) and
  test-time shift averaging over `min(2, max(1, round(p / 4)))` pixels, which
  re-cuts the patch grid; larger images: the data's default augmentation
  (crop, plus flip for colour) and no shift averaging.

Options the user gives win, and the derived choices follow them: a given
width sets the heads and MLP width, a given variant (e.g. ``S/16``) keeps its
own architecture, and the epoch budget is planned for the model that will
actually train.

Example:
>>> preset = scaled_preset((28, 28, 1), 4596, num_validation=576)
>>> preset["variant"], preset["hidden_dim"], preset["augmentation"], preset["tta_shift"]
('Ti/7', 64, 'affine', 2)
"""

import math

# The digits preset was chosen by the sweep recorded in README.md. It fits the
# final model on train+validation: the recipe (epochs included) was chosen on
# the validation split, and its 288 more images of the same writers lifted the
# test accuracy from 98.5-98.9 % to 99.2-99.4 % (README.md, `make train`).
PRESETS = {
    "digits": dict(variant="Ti/2", hidden_dim=64, depth=4, num_heads=4, mlp_dim=128,
                   pooling="gap", epochs=90, batch_size=128, learning_rate=3e-3,
                   augmentation="affine", tta_shift=1, fit_on="train+validation"),
}

MIN_TOKENS = 16
MAX_PATCH = 16
SMALL_DATA = 10_000
MEDIUM_DATA = 50_000
SMALL_IMAGE_SIDE = 64
FIT_BUDGET_SECONDS = 200.0
PLANNING_FLOP_RATE = 20e9
EPOCH_OVERHEAD_SECONDS = 1.0
MIN_EPOCHS, MAX_EPOCHS = 10, 100
MIN_STEPS_PER_EPOCH = 16
# Architecture options a preset fills; `--init` takes them from the checkpoint.
_SIZE_OPTIONS = ("hidden_dim", "depth", "num_heads", "mlp_dim")


def choose_patch_size(height, width):
    """The largest patch side <= `MAX_PATCH` dividing both sides with >= `MIN_TOKENS` patches.

    Falls back to 1 (one token per pixel) when no larger side divides both.

    Example:
    >>> [choose_patch_size(s, s) for s in (8, 28, 32, 224)]
    [2, 7, 8, 16]
    """
    divisors = [p for p in range(1, min(MAX_PATCH, height, width) + 1)
                if height % p == 0 and width % p == 0
                and (height // p) * (width // p) >= MIN_TOKENS]
    return max(divisors, default=1)


def choose_width_depth(num_train):
    """`(hidden_dim, depth)` for this many training images.

    Example:
    >>> choose_width_depth(4000), choose_width_depth(60_000)
    ((64, 4), (192, 8))
    """
    if num_train <= SMALL_DATA:
        return 64, 4
    if num_train <= MEDIUM_DATA:
        return 128, 6
    return 192, 8


def heads_for(hidden_dim):
    """4 heads up to width 128, else 64-wide heads (at least 1).

    Example:
    >>> heads_for(64), heads_for(192)
    (4, 3)
    """
    return 4 if hidden_dim <= 128 else max(1, hidden_dim // 64)


def batch_size_for(num_train):
    """128, halved down to 16 while an epoch would have fewer than 16 steps.

    Example:
    >>> batch_size_for(50_000), batch_size_for(600)
    (128, 32)
    """
    batch = 128
    while batch > 16 and num_train // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def training_flops(image_shape, patch_size, hidden_dim, depth, mlp_dim, num_classes=10):
    """Planned FLOPs of one training image (3 x forward; matmuls only, class-token-free).

    Example:
    >>> training_flops((28, 28, 1), 7, 64, 4, 128) / 1e6  # doctest: +ELLIPSIS
    13.6...
    """
    height, width, channels = image_shape
    patches = (height // patch_size) * (width // patch_size)
    block = 2 * patches * (4 * hidden_dim ** 2 + 2 * hidden_dim * mlp_dim)
    attention = 4 * patches ** 2 * hidden_dim
    embed = 2 * patches * patch_size ** 2 * channels * hidden_dim
    return 3 * (embed + depth * (block + attention) + 2 * hidden_dim * num_classes)


def planned_epoch_seconds(image_shape, num_train, num_validation, architecture):
    """Planned seconds of one epoch: train + validation FLOPs at `PLANNING_FLOP_RATE`, plus overhead.

    Args:
        image_shape: (H, W, C).
        num_train, num_validation: images per split.
        architecture: dict with patch_size, hidden_dim, depth, mlp_dim.
    """
    flops = training_flops(image_shape, **architecture)
    seen = num_train * flops + num_validation * flops / 3
    return seen / PLANNING_FLOP_RATE + EPOCH_OVERHEAD_SECONDS


def epochs_for(image_shape, num_train, num_validation, architecture):
    """Epochs that fit `FIT_BUDGET_SECONDS`, clipped to [`MIN_EPOCHS`, `MAX_EPOCHS`].

    Example:
    >>> epochs_for((28, 28, 1), 4596, 576, dict(patch_size=7, hidden_dim=64, depth=4,
    ...                                          mlp_dim=128))
    46
    """
    epoch = planned_epoch_seconds(image_shape, num_train, num_validation, architecture)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.floor(FIT_BUDGET_SECONDS / epoch))))


def _architecture(image_shape, num_train, given):
    """(options the preset fills, the architecture that will train) under the given options."""
    size, variant_patch = None, None
    if given.get("variant"):
        from keras_vit.models.vit import VIT_VARIANTS, parse_variant

        size, variant_patch = parse_variant(given["variant"])
    patch = given.get("patch_size") or variant_patch or choose_patch_size(*image_shape[:2])
    if size:  # a given variant keeps its own sizes unless they are given too
        sizes = {**VIT_VARIANTS[size], **{k: given[k] for k in _SIZE_OPTIONS if given.get(k)}}
        return {}, dict(patch_size=patch, **{k: sizes[k] for k in ("hidden_dim", "depth",
                                                                      "mlp_dim")})
    width, depth = choose_width_depth(num_train)
    width = given.get("hidden_dim") or width
    filled = dict(variant=f"Ti/{patch}", hidden_dim=width, depth=depth,
                  num_heads=heads_for(width), mlp_dim=2 * width)
    sizes = {**filled, **{k: given[k] for k in _SIZE_OPTIONS if given.get(k)}}
    return filled, dict(patch_size=patch, hidden_dim=sizes["hidden_dim"], depth=sizes["depth"],
                        mlp_dim=sizes["mlp_dim"])


def scaled_preset(image_shape, num_train, num_validation=0, given=None):
    """The preset of data without a named one, from its size (rules: module docstring).

    Args:
        image_shape: (height, width, channels) of the images the model sees.
        num_train: training images.
        num_validation: validation images (their passes count in the epoch budget).
        given: options the user set (name -> value; None values are ignored):
            the derived choices follow them. They still win over the result.

    Returns:
        dict of `TrainConfig` fields: variant, hidden_dim, depth, num_heads, mlp_dim,
        pooling, epochs, batch_size, learning_rate, augmentation, tta_shift.

    Raises:
        ValueError: a non-positive image side, channel count or training image count.

    Example:
    >>> scaled_preset((224, 224, 3), 100_000)["variant"]
    'Ti/16'
    """
    shape = tuple(image_shape)
    if len(shape) != 3 or any(not isinstance(v, int) or v <= 0 for v in shape):
        raise ValueError(f"image_shape must be 3 positive ints (H, W, C); received {image_shape!r}")
    if not isinstance(num_train, int) or num_train <= 0:
        raise ValueError(f"num_train must be a positive int; received {num_train!r}")
    given = {k: v for k, v in (given or {}).items() if v is not None}
    filled, architecture = _architecture(shape, num_train, given)
    small = max(shape[:2]) <= SMALL_IMAGE_SIDE
    width = architecture["hidden_dim"]
    return dict(
        filled, pooling="gap",
        epochs=epochs_for(shape, num_train, num_validation, architecture),
        batch_size=batch_size_for(num_train),
        learning_rate=3e-3 * 64 / max(64, width),
        augmentation="affine" if small else None,
        tta_shift=min(2, max(1, round(architecture["patch_size"] / 4))) if small else 0,
    )


#: The options `scaled_preset` chooses (and `describe_preset` reports).
PRESET_OPTIONS = ("variant", "patch_size", "hidden_dim", "depth", "num_heads", "mlp_dim",
                  "pooling", "epochs", "batch_size", "learning_rate", "augmentation",
                  "tta_shift")


def describe_preset(config, info):
    """One log line: the data the preset was scaled to and the options the run uses.

    Args:
        config: the resolved `TrainConfig` (given options included).
        info: the data's `DatasetInfo`.

    Example:
    >>> describe_preset(config, info)[:60]
    'options scaled to 28x28x1 images, 4,596 training images (gi'
    """
    height, width, channels = info.image_shape
    chosen = ", ".join(f"{name}={getattr(config, name)}" for name in PRESET_OPTIONS
                       if getattr(config, name) is not None)
    return (f"options scaled to {height}x{width}x{channels} images, {info.num_train:,} "
            f"training images (given options win; pipelines/training/presets.py): {chosen}")
