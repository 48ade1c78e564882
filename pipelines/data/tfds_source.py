"""TensorFlow Datasets sources: any tfds image classification dataset by name.

The dataset's own train / validation / test splits are used where present; a
missing one is carved from the end of train (tfds stores examples in hashed,
i.e. shuffled, order, so the tail is a random sample).

Example:
    >>> from pipelines.data.tfds_source import tfds_splits
    >>> splits = tfds_splits("mnist", "mnist", None, "/data/tfds", True, 0.2, 0)
    >>> splits.info.split_origins["validation"]
    'train[48000:60000]'
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines.data.digits import BUILDER_NAME as DIGITS_BUILDER
from pipelines.data.images import resize_pixels
from pipelines.data.info import DatasetInfo, SourceSplits

AUTOTUNE = tf.data.AUTOTUNE

#: tfds split names accepted as "the dataset's own validation split".
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")

#: Datasets whose images are not mirror-symmetric (digits, characters): their
#: default augmentation never flips. Grayscale sources are treated the same way.
NO_FLIP_DATASETS = frozenset(
    {
        DIGITS_BUILDER,
        "mnist",
        "emnist",
        "kmnist",
        "binary_alpha_digits",
        "cmaterdb",
        "omniglot",
        "svhn_cropped",
    }
)


def tfds_splits(name, source, image_size, data_dir, offline, validation_fraction, seed):
    """Prepares (if allowed) and reads a tfds dataset as `SourceSplits`.

    Args:
        name: tfds builder name, optionally with "/config" and ":version".
        source: the source as the user wrote it (for messages).
        image_size: (height, width) or None (native size).
        data_dir, offline, validation_fraction, seed: as for `load_datasets`.

    Returns:
        `SourceSplits` of uint8 (or resized float32) images and int32 labels.
    """
    builder = tfds_builder(name, source, data_dir)
    ensure_prepared(builder, source, data_dir, offline)
    info = builder.info
    image_key, label_key = _supervised_keys(info, source)
    native = tuple(info.features[image_key].shape)
    size = image_size or native[:2]
    if None in size or len(native) != 3 or native[2] is None:
        raise ValueError(
            f"source {source!r} has images of shape {native} (variable size): pass "
            "image_size=(height, width) so they can be batched"
        )
    split_names = tfds_split_names(info.splits, source, validation_fraction)
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)  # We cache.
    decode = _tfds_decoder(native, image_size)
    datasets = {
        role: builder.as_dataset(
            split=split,
            as_supervised=True,
            # File-level shuffling helps big multi-file datasets (seeded above);
            # tfds refuses it for datasets stored in a fixed order, like digits.
            shuffle_files=role == "train" and not info.disable_shuffling,
            read_config=read_config,
        ).map(decode, num_parallel_calls=AUTOTUNE)
        for role, split in split_names.items()
    }
    sizes = {f"num_{role}": int(info.splits[split].num_examples)
             for role, split in split_names.items()}
    class_names = list(info.features[label_key].names)
    channels = int(native[2])
    resized = image_size is not None and tuple(native[:2]) != tuple(image_size)
    native_size = "their own sizes" if None in native[:2] else f"{native[0]}x{native[1]}"
    conversions = (f"{builder.name}: resized all {sum(sizes.values())} images from "
                   f"{native_size} to {size[0]}x{size[1]}") if resized else ""
    return SourceSplits(
        **datasets,
        info=DatasetInfo(
            name=builder.name,
            image_shape=(int(size[0]), int(size[1]), channels),
            num_classes=len(class_names),
            class_names=class_names,
            **sizes,
            split_origins=dict(split_names),
            conversions=conversions,
        ),
        flip_invariant=builder.name not in NO_FLIP_DATASETS and channels != 1,
    )


def _check_config(name, source):
    """Raises ValueError naming the configs there are when `name/config` names none of them.

    Called once `tfds.builder` has failed: its message lists "BuilderConfigs
    whose name closely match", an empty list when none is close or the
    dataset has no configs. (Configs a builder makes up at run time, not in
    its `BUILDER_CONFIGS`, never get here: `tfds.builder` accepts them.)
    """
    base, slash, rest = name.partition("/")
    if not slash:
        return
    config = rest.split(":", 1)[0]
    try:
        builder_class = tfds.builder_cls(base.split(":", 1)[0])
    except Exception:  # an unknown name: the caller reports tfds' own error
        return
    configs = [c.name for c in (getattr(builder_class, "BUILDER_CONFIGS", None) or [])]
    if config in configs:
        return
    expected = (f"one of {configs}" if configs
                else f"none: {base!r} has no configs, use {base!r} (optionally 'name:version')")
    raise ValueError(f"cannot load tensorflow-datasets source {source!r}: {base!r} has no config "
                     f"{config!r}; expected {expected}")


def tfds_builder(name, source, data_dir):
    """`tfds.builder(name)`, any failure to find it raised as one ValueError naming `source`.

    Example:
        >>> tfds_builder("mnist", "mnist:3.0.1", "~/tfds").name
        'mnist'
    """
    try:
        return tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError, tfds.core.registered.DatasetNotFoundError) as err:
        _check_config(name, source)
        # e.g. a version that does not exist: keep the contract of a ValueError.
        raise ValueError(f"cannot load tensorflow-datasets source {source!r}: {err}") from err


def ensure_prepared(builder, source, data_dir, offline):
    """Downloads and prepares the dataset, or fails clearly when offline.

    Builders that need no download (the embedded digits sets) are prepared
    even offline.

    Example:
        >>> ensure_prepared(tfds_builder("mnist", "mnist", None), "mnist", None, offline=True)
    """
    if builder.is_prepared():
        return
    if offline and getattr(builder, "REQUIRES_DOWNLOAD", True):
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
        raise ValueError(
            f"source {source!r} is not prepared in {where} and --offline (offline=True) forbids "
            f"downloading it: prepare it once with network (e.g. `tfds build "
            f"{builder.name} --data_dir {data_dir or '~/tensorflow_datasets'}`) or pass "
            "the data_dir where it is prepared"
        )
    builder.download_and_prepare()


def _supervised_keys(info, source):
    """(image key, label key), checking it is an image classification dataset."""
    keys = info.supervised_keys
    image_key, label_key = keys if keys and len(keys) == 2 else (None, None)
    features = info.features
    if not (
        isinstance(image_key, str)
        and isinstance(label_key, str)
        and isinstance(features[image_key], tfds.features.Image)
        and isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"source {source!r} is not an image classification dataset: expected "
            f"supervised keys (Image, ClassLabel), got {keys!r}"
        )
    return image_key, label_key


def tfds_split_names(available, source, validation_fraction):
    """Maps train/validation/test to tfds split strings, carving missing ones.

    The dataset's own splits are used where present. A missing validation (and/or
    test) split is carved from the end of train with absolute example counts.

    Args:
        available: the builder's `info.splits` (split name -> SplitInfo).
        source: the source as written, for messages.
        validation_fraction: share of train per carved split.

    Returns:
        {"train": ..., "validation": ..., "test": ...} tfds split strings.

    Example:
        >>> tfds_split_names(info.splits, "mnist", 0.2)  # train 60000, test 10000
        {'train': 'train[:48000]', 'validation': 'train[48000:60000]', 'test': 'test'}
    """
    if "train" not in available:
        raise ValueError(
            f"source {source!r} has splits {sorted(available)}: expected a 'train' split "
            "(is it prepared in this data_dir?)"
        )
    validation = next((s for s in VALIDATION_SPLIT_NAMES if s in available), None)
    test = "test" if "test" in available else None
    carve = [role for role, split in (("validation", validation), ("test", test)) if not split]
    if len(carve) == 2 and validation_fraction >= 0.5:
        raise ValueError(
            f"validation_fraction={validation_fraction!r}: source {source!r} has neither "
            "validation nor test split, both are carved from train, so expected < 0.5"
        )
    total = available["train"].num_examples
    held_out = int(np.floor(total * validation_fraction + 0.5))
    keep = total - held_out * len(carve)
    if carve and (held_out < 1 or keep < 1):
        raise ValueError(
            f"validation_fraction={validation_fraction!r} of {total} training examples of "
            f"{source!r} leaves an empty split"
        )
    names = {"train": f"train[:{keep}]" if carve else "train", "validation": validation,
             "test": test}
    for position, role in enumerate(carve):
        start = keep + position * held_out
        names[role] = f"train[{start}:{start + held_out}]"
    return names


def _tfds_decoder(native_shape, image_size):
    """Map fn: tfds (image, label) -> (uint8 or resized float32 image, int32 label)."""

    def decode(image, label):
        if image.dtype != tf.uint8:
            # e.g. uint16 PNGs: rescale to the shared [0, 255] convention.
            image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
        if image_size is not None and tuple(native_shape[:2]) != tuple(image_size):
            image = resize_pixels(image, image_size)
        return image, tf.cast(label, tf.int32)

    return decode
