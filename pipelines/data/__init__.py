"""Input pipelines: one entry point for every data source of keras-vit.

`load_datasets` returns batched, prefetched `tf.data.Dataset`s of
`(image, label)` for training, validation and test, whatever the source:

* ``"digits"`` (default): the UCI handwritten digits bundled with scikit-learn,
  prepared through tfds by `pipelines.digits_dataset` -- no network needed;
* any tensorflow-datasets name (``"mnist"``, ``"cifar10"``, ``"mnist:3.0.1"``, ...);
* an image folder with one sub-folder per class (a path, or ``"folder:PATH"``).

Conventions shared with the rest of the package:

* images are float32 in RAW PIXEL SCALE [0, 255] with shape (H, W, C);
  normalisation happens inside the model, never here;
* labels are int32 class indices;
* validation and test are never augmented and never shuffled;
* stages: parallel decode -> cache (when it fits; before augmentation) ->
  seeded shuffle -> augmentation (train only) -> batch -> prefetch.

Example:
    >>> from pipelines.data import load_datasets
    >>> data = load_datasets("digits", batch_size=32, data_dir="/tmp/tfds")
    >>> data.info.image_shape, data.info.num_classes
    ((8, 8, 1), 10)
    >>> images, labels = next(iter(data.train))
    >>> images.dtype.name, labels.dtype.name
    ('float32', 'int32')
"""

import dataclasses
import difflib
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines import digits_dataset  # Registers the "uci_digits" tfds builder.
from pipelines.data.images import decode_image, resize_pixels

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

DIGITS_SOURCE = "digits"
FOLDER_PREFIX = "folder:"
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip", "affine")

#: "affine": random rotation within +-AFFINE_DEGREES and zoom within +-AFFINE_ZOOM,
#: then the random crop shift; measured on digits in README.md.
AFFINE_DEGREES = 10.0
AFFINE_ZOOM = 0.1
#: Share of images warped; the rest keep their sharp (never interpolated) pixels,
#: which is what evaluation sees.
AFFINE_PROBABILITY = 0.5
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: tfds split names accepted as "the dataset's own validation split".
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")

#: `cache=True` keeps a split in memory only if its decoded images fit in this.
CACHE_BUDGET_BYTES = 2 * 1024**3

#: Datasets whose images are not mirror-symmetric (digits, characters): their
#: default augmentation never flips. Grayscale sources are treated the same way.
NO_FLIP_DATASETS = frozenset(
    {
        digits_dataset.BUILDER_NAME,
        "mnist",
        "emnist",
        "kmnist",
        "binary_alpha_digits",
        "cmaterdb",
        "omniglot",
        "svhn_cropped",
    }
)


@dataclasses.dataclass
class DatasetInfo:
    """What a model needs to know about the data.

    Attributes:
        name: dataset name (tfds builder name, or the folder's base name).
        image_shape: (H, W, C) of the images the datasets yield (after resize).
        num_classes: number of classes; labels are in [0, num_classes).
        class_names: one name per class index.
        num_train, num_validation, num_test: examples per split (unbatched).
    """

    name: str
    image_shape: tuple
    num_classes: int
    class_names: list
    num_train: int
    num_validation: int
    num_test: int


@dataclasses.dataclass
class Datasets:
    """The three batched pipelines plus their `DatasetInfo`."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo


@dataclasses.dataclass
class _Splits:
    """Unbatched, decoded (image, label) datasets before the shared stages.

    Images are uint8 or float32 with a static (H, W, C) shape, labels int32.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo
    flip_invariant: bool


def describe_sources() -> str:
    """Human-readable list of data sources and augmentations, for --help texts.

    Returns:
        A multi-line string.

    Example:
        >>> print(describe_sources())  # doctest: +ELLIPSIS
        data sources:...
    """
    return "\n".join(
        [
            "data sources:",
            "  digits              (default) UCI handwritten digits: 1,797 8x8 grayscale",
            "                      images, 10 classes, bundled with scikit-learn (no network);",
            "                      fixed splits train 1149 / validation 288 / test 360",
            "  NAME[:VERSION]      a tensorflow-datasets image classification dataset, e.g.",
            "                      mnist, fashion_mnist, cifar10, mnist:3.0.1; downloaded into",
            "                      the data dir on first use (with --offline it must already",
            "                      be prepared there); a missing validation split is carved",
            "                      from train with the validation fraction",
            "  PATH, folder:PATH   an image folder with one sub-folder per class holding",
            "                      JPEG/PNG files; validation and test are each a seeded,",
            "                      stratified validation-fraction share of every class",
            "augmentations (training split only): none, flip, crop, crop_flip, affine",
            "  default: crop (pad then random crop back) for digits, characters and",
            "  grayscale sources; crop_flip for colour images",
        ]
    )


def load_datasets(
    source=DIGITS_SOURCE,
    *,
    batch_size=64,
    image_size=None,
    data_dir=None,
    offline=False,
    validation_fraction=0.2,
    augment=True,
    augmentation=None,
    seed=0,
    deterministic=False,
    cache=True,
    shuffle_buffer=10_000,
    drop_remainder=False,
) -> Datasets:
    """Builds the train / validation / test pipelines of a data source.

    Args:
        source: "digits" (default), a tfds dataset name (optionally "name:version"
            or "name/config:version"), or an image folder (an existing directory,
            or "folder:PATH") with one sub-folder of JPEG/PNG images per class.
        batch_size: examples per batch (> 0). The last batch may be smaller.
        image_size: (height, width) to resize to, or an int for square images;
            None keeps the native size (for folders: the first image's size).
        data_dir: tfds data directory; None lets tfds use its default
            (~/tensorflow_datasets). Unused for folders.
        offline: never touch the network: a tfds dataset must already be prepared
            in data_dir (datasets that need no download, like digits, are still
            prepared locally).
        validation_fraction: in (0, 1). Share carved off train for validation when
            the source has no validation split, and (folders, or tfds datasets
            without test split) likewise for test. Ignored for a split the source
            already has.
        augment: False turns augmentation off whatever `augmentation` says.
        augmentation: None (default for the data: "crop" for digits, characters and
            grayscale images, "crop_flip" for colour images), "none", "flip",
            "crop" (zero-pad by max(1, min(H, W) // 8) pixels, random crop back) or
            "crop_flip". Applied to the training split only.
        seed: seeds the shuffle, the augmentation and the folder split.
        deterministic: make two runs yield identical batches (deterministic
            tf.data ordering on top of the fixed seeds). Validation and test are
            always deterministic.
        cache: True caches decoded images in memory when a split fits in
            CACHE_BUDGET_BYTES, False never caches, a string is a file prefix for
            an on-disk cache (one file set per split).
        shuffle_buffer: shuffle buffer size for the training split (> 0).
        drop_remainder: drop the training split's last, smaller batch (when there
            is at least one full batch). One batch shape means one traced and
            compiled train step; reshuffling still shows every example.

    Returns:
        `Datasets` with batched, prefetched `train`, `validation` and `test` of
        (float32 images in [0, 255] shaped (batch, H, W, C), int32 labels), and
        `info`.

    Raises:
        ValueError: for a bad argument or source (unknown tfds name, folder without
            class sub-folders or images, dataset not prepared in offline mode...),
            naming the value and what was expected.

    Example:
        >>> data = load_datasets("cifar10", batch_size=128, data_dir="/data/tfds")
        >>> model.fit(data.train, validation_data=data.validation)
    """
    image_size = _check_arguments(
        batch_size, image_size, validation_fraction, augmentation, seed, shuffle_buffer, cache
    )
    kind, target = _parse_source(source)
    if kind == "folder":
        splits = _folder_splits(target, image_size, validation_fraction, seed)
    else:
        splits = _tfds_splits(
            target, source, image_size, data_dir, offline, validation_fraction, seed
        )

    if not augment:
        augmentation = "none"
    elif augmentation is None:
        augmentation = "crop_flip" if splits.flip_invariant else "crop"

    info = splits.info
    common = dict(batch_size=batch_size, cache=cache)
    return Datasets(
        train=_finish(
            splits.train,
            "train",
            info.num_train,
            training=True,
            augmentation=augmentation,
            seed=seed,
            deterministic=deterministic,
            shuffle_buffer=shuffle_buffer,
            drop_remainder=drop_remainder,
            **common,
        ),
        validation=_finish(splits.validation, "validation", info.num_validation, **common),
        test=_finish(splits.test, "test", info.num_test, **common),
        info=info,
    )


# --------------------------------------------------------------------------- checks


def _is_int(value):
    # bool is an int subclass, but batch_size=True is a bug, not a size.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_arguments(
    batch_size, image_size, validation_fraction, augmentation, seed, shuffle_buffer, cache
):
    """Validates the plain arguments; returns image_size as an (h, w) tuple or None."""
    if not _is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if not _is_int(shuffle_buffer) or shuffle_buffer <= 0:
        raise ValueError(f"shuffle_buffer={shuffle_buffer!r}: expected a positive integer")
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r}: expected an integer")
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float, np.floating, np.integer))
        or not 0.0 < float(validation_fraction) < 1.0
    ):
        raise ValueError(
            f"validation_fraction={validation_fraction!r}: expected a number strictly "
            "between 0 and 1"
        )
    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"augmentation={augmentation!r}: expected None or one of {list(AUGMENTATIONS)}"
        )
    if not isinstance(cache, (bool, str)):
        raise ValueError(f"cache={cache!r}: expected True, False or a file path prefix")
    return _check_image_size(image_size)


def _check_image_size(image_size):
    if image_size is None:
        return None
    if _is_int(image_size):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        height = width = None
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(
            f"image_size={image_size!r}: expected None or (height, width) positive integers"
        )
    return int(height), int(width)


def _parse_source(source):
    """Returns ("folder", path) or ("tfds", builder name with optional config/version)."""
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"source={source!r}: expected 'digits', a tfds dataset name or an image folder"
        )
    text = os.fspath(source)
    if text.startswith(FOLDER_PREFIX):
        return "folder", text[len(FOLDER_PREFIX) :]
    if os.path.isdir(text):
        return "folder", text
    if text == DIGITS_SOURCE or text.startswith(DIGITS_SOURCE + ":"):
        return "tfds", digits_dataset.BUILDER_NAME + text[len(DIGITS_SOURCE) :]
    # "name", "name:1.0.0", "name/config", "name/config:1.0.0": check the name
    # against the registered builders before anything touches disk or network.
    name = text.split(":", 1)[0].split("/", 1)[0]
    known = tfds.list_builders(with_community_datasets=False)
    if name not in known:
        close = difflib.get_close_matches(name, [DIGITS_SOURCE] + known, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown data source {text!r}{hint}: expected 'digits', a tensorflow-datasets "
            "name such as 'mnist' or 'cifar10' (optionally 'name:version'), or an existing "
            "image folder with one sub-folder per class"
        )
    return "tfds", text


# ----------------------------------------------------------------------------- tfds


def _tfds_splits(name, source, image_size, data_dir, offline, validation_fraction, seed):
    """Prepares (if allowed) and reads a tfds dataset as `_Splits`."""
    builder = _tfds_builder(name, source, data_dir)
    _ensure_prepared(builder, source, data_dir, offline)
    info = builder.info
    image_key, label_key = _supervised_keys(info, source)
    native = tuple(info.features[image_key].shape)
    size = image_size or native[:2]
    if None in size or len(native) != 3 or native[2] is None:
        raise ValueError(
            f"source {source!r} has images of shape {native} (variable size): pass "
            "image_size=(height, width) so they can be batched"
        )
    channels = native[2]

    split_names = _tfds_split_names(info.splits, source, validation_fraction)
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
    class_names = list(info.features[label_key].names)
    return _Splits(
        **datasets,
        info=DatasetInfo(
            name=builder.name,
            image_shape=(int(size[0]), int(size[1]), int(channels)),
            num_classes=len(class_names),
            class_names=class_names,
            **{
                f"num_{role}": int(info.splits[split].num_examples)
                for role, split in split_names.items()
            },
        ),
        flip_invariant=builder.name not in NO_FLIP_DATASETS and channels != 1,
    )


def _tfds_builder(name, source, data_dir):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError, tfds.core.registered.DatasetNotFoundError) as err:
        # e.g. a version that does not exist: keep the contract of a ValueError.
        raise ValueError(f"cannot load tensorflow-datasets source {source!r}: {err}") from err


def _ensure_prepared(builder, source, data_dir, offline):
    """Downloads and prepares the dataset, or fails clearly when offline."""
    if builder.is_prepared():
        return
    if offline and getattr(builder, "REQUIRES_DOWNLOAD", True):
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
        raise ValueError(
            f"source {source!r} is not prepared in {where} and offline=True forbids "
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


def _tfds_split_names(available, source, validation_fraction):
    """Maps train/validation/test to tfds split strings, carving missing ones.

    The dataset's own splits are used where present. A missing validation (and/or
    test) split is carved from the end of train with absolute example counts,
    e.g. "train[:48000]" / "train[48000:]" for validation_fraction=0.2 of 60000.
    tfds stores examples in hashed (shuffled) order, so the tail is a random sample.
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
    names = {"train": f"train[:{keep}]" if carve else "train", "validation": validation}
    names["test"] = test
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


# --------------------------------------------------------------------------- folder


def _folder_splits(root, image_size, validation_fraction, seed):
    """Reads an image folder (one sub-folder per class) as `_Splits`."""
    class_names, files = _scan_folder(root)
    if validation_fraction >= 0.5:
        raise ValueError(
            f"validation_fraction={validation_fraction!r}: an image folder is split three "
            "ways (validation and test each take this share), so expected < 0.5"
        )
    parts = _stratified_split(files, validation_fraction, seed)
    first_path = files[0][0]
    first = _decode_file(first_path)
    # Grayscale (+alpha) -> 1 channel, anything else (RGB, RGBA) -> 3 channels.
    channels = 1 if first.shape[-1] in (1, 2) else 3
    size = image_size or tuple(int(d) for d in first.shape[:2])
    decode = _folder_decoder(size, channels)

    datasets = {}
    for role, (paths, labels) in parts.items():
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
        )
        datasets[role] = ds.map(decode, num_parallel_calls=AUTOTUNE)
    return _Splits(
        **datasets,
        info=DatasetInfo(
            name=os.path.basename(os.path.normpath(root)),
            image_shape=(size[0], size[1], channels),
            num_classes=len(class_names),
            class_names=class_names,
            **{f"num_{role}": len(paths) for role, (paths, _) in parts.items()},
        ),
        flip_invariant=channels == 3,
    )


def _scan_folder(root):
    """Sorted class names and, per class index, the sorted list of image paths."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    class_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_names:
        raise ValueError(
            f"image folder {root!r} has no class sub-folders: expected one sub-folder of "
            f"{'/'.join(IMAGE_EXTENSIONS)} images per class"
        )
    files = [_list_images(os.path.join(root, name)) for name in class_names]
    empty = [name for name, paths in zip(class_names, files) if not paths]
    if empty:
        raise ValueError(
            f"image folder {root!r}: class sub-folders {empty} contain no images: "
            f"expected files ending in {'/'.join(IMAGE_EXTENSIONS)}"
        )
    return class_names, files


def _list_images(directory):
    paths = []
    for parent, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [
            os.path.join(parent, name)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        ]
    return sorted(paths)


def _stratified_split(files, fraction, seed):
    """Seeded per-class split into train / validation / test (path, label) lists.

    Each class gives round(n * fraction) images to validation and as many to test
    (never its last training image), so every split keeps the class proportions.
    Within a split, examples stay sorted by (class, path) so the result depends only
    on the folder content and the seed.
    """
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "validation": ([], []), "test": ([], [])}
    for label, paths in enumerate(files):
        order = rng.permutation(len(paths))
        held_out = int(np.floor(len(paths) * fraction + 0.5))
        held_out = min(held_out, (len(paths) - 1) // 2)
        chosen = {
            "validation": sorted(order[:held_out]),
            "test": sorted(order[held_out : 2 * held_out]),
            "train": sorted(order[2 * held_out :]),
        }
        for role, indices in chosen.items():
            parts[role][0].extend(paths[i] for i in indices)
            parts[role][1].extend([label] * len(indices))
    for role, (paths, _) in parts.items():
        if not paths:
            raise ValueError(
                f"image folder split {role!r} is empty with validation_fraction={fraction!r}: "
                "expected more images per class"
            )
    return parts


def _decode_file(path):
    """Eagerly decodes one image (to read its size and channels)."""
    try:
        return tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
        raise ValueError(f"cannot decode image file {path!r}: expected JPEG or PNG") from err


def _folder_decoder(size, channels):
    """Map fn: (path, label) -> (float32 image of `size`, label), via `decode_image`."""
    image_shape = (size[0], size[1], channels)

    def decode(path, label):
        return decode_image(tf.io.read_file(path), image_shape), label

    return decode


# ------------------------------------------------------------------ shared stages


def _finish(
    ds,
    role,
    num_examples,
    *,
    batch_size,
    cache,
    training=False,
    augmentation="none",
    seed=0,
    deterministic=True,
    shuffle_buffer=1,
    drop_remainder=False,
):
    """Cache -> (train: shuffle, augment) -> float32 -> batch -> prefetch."""
    ds = _maybe_cache(ds, role, num_examples, cache)
    if training:
        ds = ds.shuffle(
            min(shuffle_buffer, max(num_examples, 1)), seed=seed, reshuffle_each_iteration=True
        )
    if training and augmentation != "none":
        # Stateless ops fed with per-example seeds from a seeded random stream:
        # reproducible even with parallel map, and different every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        augment = _augmenter(augmentation, ds.element_spec[0].shape)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda example, s: (augment(tf.cast(example[0], tf.float32), s), example[1]),
            num_parallel_calls=AUTOTUNE,
        )
    else:
        ds = ds.map(lambda image, label: (tf.cast(image, tf.float32), label))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder and num_examples >= batch_size)
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    # Validation/test order is part of the contract ("never shuffled").
    options.deterministic = bool(deterministic) or not training
    return ds.with_options(options)


def _maybe_cache(ds, role, num_examples, cache):
    if cache is False:
        return ds
    if isinstance(cache, str):
        return ds.cache(f"{cache}-{role}")
    spec = ds.element_spec[0]
    nbytes = num_examples * int(np.prod(spec.shape)) * spec.dtype.size
    if nbytes > CACHE_BUDGET_BYTES:
        log.info("not caching %s split: %.1f GiB > budget", role, nbytes / 1024**3)
        return ds
    return ds.cache()


def _augmenter(kind, shape):
    """Returns fn(float32 image (H, W, C), seed int64[2]) -> augmented image."""
    height, width, channels = (int(d) for d in shape)
    # 1 pixel for 8x8 digits, 3 for MNIST, 4 for CIFAR: the usual translations.
    pad = max(1, min(height, width) // 8)

    def augment(image, seed):
        crop_seed, flip_seed, affine_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        if kind == "affine":
            image = _random_rotate_zoom(image, affine_seed)
        if "crop" in kind or kind == "affine":
            padded = tf.image.pad_to_bounding_box(
                image, pad, pad, height + 2 * pad, width + 2 * pad
            )
            image = tf.image.stateless_random_crop(
                padded, (height, width, channels), seed=crop_seed
            )
        if "flip" in kind:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image

    return augment


def _random_rotate_zoom(image, seed):
    """With probability AFFINE_PROBABILITY, rotates by up to +-AFFINE_DEGREES and zooms
    by up to +-AFFINE_ZOOM about the centre.

    Stateless draws per image, so `deterministic=True` runs repeat exactly.
    """
    angle_seed, zoom_seed, apply_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    angle = tf.random.stateless_uniform((), angle_seed, -1.0, 1.0) * (AFFINE_DEGREES * np.pi / 180)
    zoom = 1.0 + tf.random.stateless_uniform((), zoom_seed, -AFFINE_ZOOM, AFFINE_ZOOM)
    apply = tf.random.stateless_uniform((), apply_seed) < AFFINE_PROBABILITY
    return tf.where(apply, rotate_zoom(image, angle, zoom), image)


def rotate_zoom(image, angle, zoom):
    """Rotates `image` (H, W, C) by `angle` radians and zooms by `zoom` about its centre.

    Output pixel (x, y) samples the input bilinearly at
    `R(angle) / zoom @ ((x, y) - centre) + centre`; outside is 0. Uses the core
    `ImageProjectiveTransformV3` op.

    Args:
        image: float32 tensor (H, W, C).
        angle: scalar, radians (counter-clockwise in (x, y) = (column, row)).
        zoom: scalar > 0; > 1 enlarges the content.

    Returns:
        float32 tensor (H, W, C).
    """
    angle = tf.cast(angle, tf.float32)
    zoom = tf.cast(zoom, tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = tf.cos(angle) / zoom, -tf.sin(angle) / zoom
    b0, b1 = tf.sin(angle) / zoom, tf.cos(angle) / zoom
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy,
                          b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
