"""Image folder sources: one sub-folder per class, optionally inside split folders.

Two layouts are read:

* ``ROOT/CLASS/*.png|jpg|jpeg``: validation and test are each carved from every
  class (seeded, stratified, `validation_fraction` of it);
* ``ROOT/train/CLASS/...`` with any of ``ROOT/validation/CLASS/...`` (or
  ``val/``) and ``ROOT/test/CLASS/...`` (the layout of Keras'
  `image_dataset_from_directory` users): given splits are used as they are, a
  missing one is carved from train the same way. Every split must have the same
  class sub-folders.

Before any pipeline is built, every file is checked once (`image_scan`): bad
files raise a ValueError naming them, or are skipped (`on_bad_image="skip"`).
All images are decoded by `pipelines.data.images.decode_image` to one
(H, W, C); the resizes and channel conversions that implies are summed up in
`DatasetInfo.conversions`.

Example:
    >>> from pipelines.data.folder import folder_splits
    >>> splits = folder_splits("/data/pets", None, 0.2, 0, "error")
    >>> splits.info.split_origins
    {'train': 'train/', 'validation': 'carved from train/ (0.2 of each class)', 'test': 'test/'}
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from pipelines.data.image_scan import (
    apply_bad_image_policy,
    choose_image_shape,
    describe_conversions,
    scan_images,
)
from pipelines.data.images import decode_image_batch, decode_same_size_files
from pipelines.data.info import DatasetInfo, SourceSplits
from pipelines.data.options import IMAGE_EXTENSIONS, SPLIT_FOLDER_NAMES

log = logging.getLogger("pipelines.data")

AUTOTUNE = tf.data.AUTOTUNE
ROLES = ("train", "validation", "test")
_CLASS_LAYOUT = "class folders"


def folder_splits(root, image_size, validation_fraction, seed, on_bad_image):
    """Reads an image folder as `SourceSplits`.

    Args:
        root: the folder (class layout or split layout, see the module docstring).
        image_size: (height, width) or None (the most common image size).
        validation_fraction: share of each training class carved per missing split.
        seed: seeds the carving.
        on_bad_image: "error" or "skip".

    Returns:
        `SourceSplits` of float32 images of one (H, W, C) and int32 labels.

    Raises:
        ValueError: missing folder, no classes or images, classes differing between
            splits, bad image files (policy "error"), or a fraction leaving a split empty.
    """
    given = find_split_folders(root)
    class_names, files = _read_given_splits(root, given)
    all_paths = [path for per_class in files.values() for paths in per_class for path in paths]
    headers, bad = scan_images(all_paths)
    skipped = apply_bad_image_policy(bad, on_bad_image, root, len(all_paths))
    if skipped:
        files = _drop_files(files, set(skipped), class_names, root)
    parts, origins = _complete_splits(files, given, validation_fraction, seed)

    name = os.path.basename(os.path.normpath(root))
    image_shape = choose_image_shape(headers, image_size)
    conversions = describe_conversions(name, headers, image_shape)
    if conversions:
        log.info("%s", conversions)
    sizes = frozenset((h.height, h.width) for h in headers)  # the good files only
    files = {role: FileSplit(tuple(paths), tuple(labels), tuple(image_shape), sizes)
             for role, (paths, labels) in parts.items()}
    return SourceSplits(
        **{role: split.decoded() for role, split in files.items()},
        info=DatasetInfo(
            name=name,
            image_shape=image_shape,
            num_classes=len(class_names),
            class_names=class_names,
            **{f"num_{role}": len(paths) for role, (paths, _) in parts.items()},
            split_origins=origins,
            conversions=conversions,
            skipped_files=skipped,
        ),
        flip_invariant=image_shape[2] == 3,
        files=files,
    )


def find_split_folders(root):
    """{role: sub-folder name} of a split layout, or {} for a class layout.

    A folder is a split layout when it has a ``train`` sub-folder, or when all its
    sub-folders are split names; anything else is read as class folders.

    Raises:
        ValueError: `root` is not a directory, split folders mixed with other
            folders, both ``validation/`` and ``val/``, or no ``train/``.

    Example:
        >>> find_split_folders("/data/pets")  # holds train/, val/, test/
        {'train': 'train', 'validation': 'val', 'test': 'test'}
    """
    names = _sub_folders(root)
    by_name = {name: role for role, names_ in SPLIT_FOLDER_NAMES.items() for name in names_}
    split_names = [name for name in names if name in by_name]
    if "train" not in names and (not split_names or len(split_names) < len(names)):
        return {}
    others = sorted(set(names) - set(split_names))
    if others:
        raise ValueError(
            f"image folder {root!r} mixes split sub-folders {split_names} with other "
            f"sub-folders {others}: expected either only class sub-folders, or only "
            "train/, validation/ (or val/) and test/ sub-folders that each hold class "
            "sub-folders"
        )
    found = {}
    for name in split_names:
        role = by_name[name]
        if role in found:
            raise ValueError(
                f"image folder {root!r} has both {found[role]}/ and {name}/: expected "
                f"one {role} split folder"
            )
        found[role] = name
    if "train" not in found:
        raise ValueError(
            f"image folder {root!r} has split sub-folders {split_names} but no train/: "
            "expected a train/ sub-folder with one sub-folder per class"
        )
    return found


def _sub_folders(directory):
    if not os.path.isdir(directory):
        raise ValueError(f"image folder {directory!r} does not exist or is not a directory")
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def list_classes(directory):
    """Sorted class names and, per class index, the sorted list of image paths.

    Raises:
        ValueError: fewer than 2 class sub-folders, or class sub-folders without images.

    Example:
        >>> list_classes("/data/pets/train")
        (['cat', 'dog'], [['/data/pets/train/cat/1.jpg', ...], [...]])
    """
    class_names = _sub_folders(directory)
    if not class_names and _holds_tfrecords(directory):
        raise ValueError(
            f"folder {directory!r} holds *.tfrecord files but no metadata.json: it looks "
            "like a `keras-vit prepare` output folder missing its metadata.json (prepare "
            "it again), not an image folder with one sub-folder per class"
        )
    if not class_names:
        raise ValueError(
            f"image folder {directory!r} has no class sub-folders: expected one sub-folder "
            f"of {'/'.join(IMAGE_EXTENSIONS)} images per class"
        )
    if len(class_names) == 1:
        raise ValueError(
            f"image folder {directory!r} has one class sub-folder ({class_names[0]!r}): a "
            "classifier needs at least 2 classes, one sub-folder of images each"
        )
    files = [_list_images(os.path.join(directory, name)) for name in class_names]
    empty = [name for name, paths in zip(class_names, files) if not paths]
    if empty:
        raise ValueError(
            f"image folder {directory!r}: class sub-folders {empty} contain no images: "
            f"expected files ending in {'/'.join(IMAGE_EXTENSIONS)}"
        )
    return class_names, files


def _holds_tfrecords(directory):
    """Whether `directory` holds TFRecord files (a `keras-vit prepare` folder)."""
    return any(entry.is_file() and entry.name.endswith(".tfrecord")
               for entry in os.scandir(directory))


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


def _read_given_splits(root, given):
    """Class names and {role: per-class path lists} of the splits present on disk."""
    if not given:
        class_names, files = list_classes(root)
        return class_names, {"train": files}
    listed = {role: list_classes(os.path.join(root, name)) for role, name in given.items()}
    class_names = listed["train"][0]
    for role, (names, _) in listed.items():
        if names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            raise ValueError(
                f"image folder {root!r}: the class sub-folders of {given[role]}/ differ "
                f"from those of train/: {given[role]}/ lacks {missing} and has {extra} "
                "that train/ lacks; expected the same classes in every split"
            )
    return class_names, {role: files for role, (_, files) in listed.items()}


def _drop_files(files, skipped, class_names, root):
    """Removes skipped paths; a class left without images is an error."""
    kept = {role: [[p for p in paths if p not in skipped] for paths in per_class]
            for role, per_class in files.items()}
    for role, per_class in kept.items():
        empty = [name for name, paths in zip(class_names, per_class) if not paths]
        if empty:
            raise ValueError(
                f"image folder {root!r}: after skipping {len(skipped)} files that cannot "
                f"be decoded, classes {empty} of the {role} split have no images left"
            )
    return kept


def _complete_splits(files, given, fraction, seed):
    """{role: (paths, labels)} of all three splits, carving the missing ones from train.

    Returns:
        (parts, origins): the splits, and where each comes from (for `DatasetInfo`).
    """
    carved = [role for role in ROLES if role not in files]
    if len(carved) == 2 and fraction >= 0.5:
        raise ValueError(
            f"validation_fraction={fraction!r}: validation and test are both carved from "
            "the training images (each takes this share of every class), so expected < 0.5"
        )
    train_origin = f"{given['train']}/" if given else _CLASS_LAYOUT
    parts = stratified_carve(files["train"], fraction, seed, carved)
    origins = {"train": train_origin}
    for role in ROLES:
        if role in carved:
            origins[role] = f"carved from {train_origin} ({fraction:g} of each class)"
        elif role != "train":
            parts[role] = _flatten(files[role])
            origins[role] = f"{given[role]}/"
    return {role: parts[role] for role in ROLES}, {role: origins[role] for role in ROLES}


def _flatten(per_class):
    paths = [path for class_paths in per_class for path in class_paths]
    labels = [label for label, class_paths in enumerate(per_class) for _ in class_paths]
    return paths, labels


def stratified_carve(files, fraction, seed, carved_roles):
    """Seeded per-class split of training files into train and the carved roles.

    Each class gives round(n * fraction) images to every carved role (never its
    last training image), so every split keeps the class proportions. Within a
    split, examples stay sorted by (class, path), so the result depends only on
    the files and the seed.

    Args:
        files: per class index, the sorted list of image paths.
        fraction: share of every class per carved role.
        seed: seeds the per-class permutations.
        carved_roles: e.g. ("validation", "test"), ("test",) or ().

    Returns:
        {role: (paths, labels)} for "train" and every carved role.

    Raises:
        ValueError: a carved split ends up empty.

    Example:
        >>> stratified_carve([["a1", "a2", "a3"]], 0.34, 0, ("validation",))
        {'validation': (['a3'], [0]), 'train': (['a1', 'a2'], [0, 0])}
    """
    rng = np.random.default_rng(seed)
    roles = (*carved_roles, "train")
    parts = {role: ([], []) for role in roles}
    for label, paths in enumerate(files):
        order = rng.permutation(len(paths))
        held_out = int(np.floor(len(paths) * fraction + 0.5))
        if carved_roles:
            held_out = min(held_out, (len(paths) - 1) // len(carved_roles))
        for position, role in enumerate(roles):
            end = (position + 1) * held_out if role != "train" else len(paths)
            for i in sorted(order[position * held_out:end]):
                parts[role][0].append(paths[i])
                parts[role][1].append(label)
    for role in carved_roles:
        if not parts[role][0]:
            raise ValueError(
                f"image folder split {role!r} is empty with validation_fraction={fraction!r}: "
                "expected more images per class"
            )
    return parts


#: Files decoded per map call when a split is decoded in file order.
DECODE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """One split's image files, and how they are decoded.

    `SourceSplits.files` holds one per role, so that a training split that is
    not cached can be shuffled as file names and decoded in training batches
    (`batches`), instead of being decoded in file order and shuffled after:
    a shuffle buffer of decoded images has to fill before it yields anything,
    so decoding and the rest of the pipeline took turns at every epoch, and
    regrouping images one by one into batches cost tf.data work per image.

    Attributes:
        paths, labels: the files, in split order, and their class indices.
        image_shape: `(H, W, C)` every image is decoded to.
        sizes: the `(height, width)` of the files (one entry: the batched fast path).

    Example:
        >>> split.batches(128, seed=0).element_spec[0].shape
        TensorShape([None, 32, 32, 3])
    """

    paths: tuple
    labels: tuple
    image_shape: tuple
    sizes: frozenset

    def __add__(self, other):
        """`self`'s files followed by `other`'s (training on train+validation)."""
        return dataclasses.replace(self, paths=self.paths + other.paths,
                                   labels=self.labels + other.labels,
                                   sizes=self.sizes | other.sizes)

    def _files(self):
        return tf.data.Dataset.from_tensor_slices(
            (tf.constant(self.paths, tf.string), tf.constant(self.labels, tf.int32)))

    def _decode(self, paths):
        """float32 `[batch, H, W, C]` pixels of a `[batch]` of paths."""
        if len(self.sizes) == 1:
            (size,) = self.sizes
            return decode_same_size_files(paths, size, self.image_shape)
        return decode_image_batch(paths, self.image_shape, read=tf.io.read_file)

    def decoded(self):
        """Unbatched (float32 image, int32 label) dataset, in file order.

        Files are read and decoded `DECODE_BATCH` at a time (every file of one
        size: resized in one op, `decode_same_size_files`); the pixels are
        those of `decode_image` file by file.
        """
        return self._files().batch(DECODE_BATCH).map(
            lambda paths, labels: (self._decode(paths), labels),
            num_parallel_calls=AUTOTUNE).unbatch().apply(
                # unbatch() forgets the count; the training job sizes its epochs by it.
                tf.data.experimental.assert_cardinality(len(self.paths)))

    def batches(self, batch_size, *, seed, drop_remainder=False):
        """Batches of (float32 images, int32 labels), files reshuffled every epoch.

        All file names are shuffled at once (a perfect shuffle costs only the
        names), seeded, in a new order each iteration; each batch of names is
        then read and decoded in one map call.

        Args:
            batch_size: files per batch.
            seed: seeds the shuffle.
            drop_remainder: drop the last, smaller batch.
        """
        files = self._files().shuffle(len(self.paths), seed=seed, reshuffle_each_iteration=True)
        return files.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda paths, labels: (self._decode(paths), labels), num_parallel_calls=AUTOTUNE)
