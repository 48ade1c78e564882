"""`load_datasets`: any data source -> batched train / validation / test pipelines.

Example:
    >>> from pipelines.data import load_datasets
    >>> data = load_datasets("digits", batch_size=32, data_dir="/tmp/tfds")
    >>> data.info.image_shape, data.info.num_classes
    ((8, 8, 1), 10)
"""

from pipelines.data.arguments import check_arguments, parse_source
from pipelines.data.folder import folder_splits
from pipelines.data.info import Datasets
from pipelines.data.options import DIGITS_SOURCE
from pipelines.data.stages import even_batch_size, finish
from pipelines.data.tfds_source import tfds_splits


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
    on_bad_image="error",
) -> Datasets:
    """Builds the train / validation / test pipelines of a data source.

    Args:
        source: "digits" (default), a tfds dataset name (optionally "name:version"
            or "name/config:version"), or an image folder (an existing directory,
            or "folder:PATH"): one sub-folder of JPEG/PNG images per class, or
            train/, validation/ (or val/) and test/ sub-folders each holding one
            sub-folder per class (missing validation/test are carved from train).
        batch_size: examples per batch (> 0). The last batch may be smaller;
            validation and test come in even batches of at most this size
            (`stages.even_batch_size`: 288 images at 128 give three of 96).
        image_size: (height, width) to resize to, or an int for square images;
            None keeps the native size (for folders: the most common image size).
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
            grayscale images, "crop_flip" for colour images) or one of
            `AUGMENTATIONS`: "none", "flip", "crop" (zero-pad by
            max(1, min(H, W) // 8) pixels, random crop back), "crop_flip", "affine"
            (random rotation/zoom, then the crop). Training split only.
        seed: seeds the shuffle, the augmentation and the folder split.
        deterministic: make two runs yield identical batches (deterministic
            tf.data ordering on top of the fixed seeds). Validation and test are
            always deterministic.
        cache: True caches decoded images in memory when a split fits in
            CACHE_BUDGET_BYTES, False never caches, a string is a file prefix for
            an on-disk cache (one file set per split).
        shuffle_buffer: shuffle buffer size for the training split (> 0), in
            decoded images. An image folder's training split that is not cached
            is shuffled as file names instead, all at once, before decoding.
        drop_remainder: drop the training split's last, smaller batch (when there
            is at least one full batch). One batch shape means one traced and
            compiled train step; reshuffling still shows every example.
        on_bad_image: one of `BAD_IMAGE_POLICIES`, for image folders: every file
            is checked once before anything is built; "error" (default) raises a
            ValueError naming the files that cannot be decoded, "skip" leaves them
            out with one logged warning (listed in `info.skipped_files`).

    Returns:
        `Datasets` with batched, prefetched `train`, `validation` and `test` of
        (float32 images in [0, 255] shaped (batch, H, W, C), int32 labels), and
        `info` (sizes, classes, where each split comes from, conversions).

    Raises:
        ValueError: for a bad argument or source (unknown tfds name, folder without
            class sub-folders or images, undecodable image files, dataset not
            prepared in offline mode...), naming the value and what was expected.

    Example:
        >>> data = load_datasets("cifar10", batch_size=128, data_dir="/data/tfds")
        >>> model.fit(data.train, validation_data=data.validation)
    """
    image_size = check_arguments(
        batch_size=batch_size, image_size=image_size, validation_fraction=validation_fraction,
        augmentation=augmentation, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache,
        on_bad_image=on_bad_image)
    splits = read_source(source, image_size=image_size, data_dir=data_dir, offline=offline,
                         validation_fraction=validation_fraction, seed=seed,
                         on_bad_image=on_bad_image)
    return batch_splits(splits, batch_size=batch_size, augment=augment,
                        augmentation=augmentation, seed=seed, deterministic=deterministic,
                        cache=cache, shuffle_buffer=shuffle_buffer,
                        drop_remainder=drop_remainder)


def read_source(source, *, image_size, data_dir, offline, validation_fraction, seed,
                on_bad_image):
    """The first half of `load_datasets`: the source read as decoded, unbatched `SourceSplits`.

    Its `info` (image shape, split sizes) is known before any batch size or
    augmentation is chosen (the training job scales its preset to it).
    Arguments as for `load_datasets` (`image_size`: None or (height, width)).

    Example:
        >>> splits = read_source("digits", image_size=None, data_dir=None, offline=False,
        ...                      validation_fraction=0.2, seed=0, on_bad_image="error")
        >>> splits.info.image_shape
        (8, 8, 1)
    """
    kind, target = parse_source(source)
    if kind == "folder":
        return folder_splits(target, image_size, validation_fraction, seed, on_bad_image)
    return tfds_splits(target, source, image_size, data_dir, offline, validation_fraction, seed)


def batch_splits(splits, *, batch_size, augment=True, augmentation=None, seed=0,
                 deterministic=False, cache=True, shuffle_buffer=10_000,
                 drop_remainder=False) -> Datasets:
    """The second half of `load_datasets`: `SourceSplits` -> batched, prefetched `Datasets`.

    Arguments as for `load_datasets`.

    Example:
        >>> data = batch_splits(splits, batch_size=32, augmentation="affine")
    """
    if not augment:
        augmentation = "none"
    elif augmentation is None:
        augmentation = "crop_flip" if splits.flip_invariant else "crop"

    info = splits.info
    train = finish(splits.train, "train", info.num_train, training=True,
                   augmentation=augmentation, seed=seed, deterministic=deterministic,
                   shuffle_buffer=shuffle_buffer, drop_remainder=drop_remainder,
                   batch_size=batch_size, cache=cache,
                   files=splits.files["train"] if splits.files else None)
    # Evaluation splits in even batches: one shape for a compiled test step where possible.
    return Datasets(
        train=train,
        validation=finish(splits.validation, "validation", info.num_validation, cache=cache,
                          batch_size=even_batch_size(info.num_validation, batch_size)),
        test=finish(splits.test, "test", info.num_test, cache=cache,
                    batch_size=even_batch_size(info.num_test, batch_size)),
        info=info,
    )
