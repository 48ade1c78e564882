"""Where the images and texts of a sequence task come from: tfds, or a folder with labels.csv.

Both readers return `RawSplits`: per split (train / validation / test) the
images (a uint8 array, or checked file paths), the texts and, per example, a
name for error messages (``"test/labels.csv line 7 (a.png)"``). Nothing is
decoded into a pipeline here; every check that can fail runs first, before a
run folder exists.

* tfds: any builder whose supervised keys are `(Image, Text)`, e.g. the
  embedded ``digit_strings`` (`pipelines.data.digit_strings`, no network);
* folder: ``ROOT/labels.csv`` (validation and test carved from it, seeded), or
  ``ROOT/train/labels.csv`` plus any of ``ROOT/validation`` (or ``val``) and
  ``ROOT/test``, each with its own ``labels.csv``; a missing split is carved
  from train. A ``labels.csv`` (UTF-8, a leading byte order mark ignored) has
  the header ``filename,text``; file names are relative to its folder and stay
  inside it (sub-folders allowed; no absolute names, no ``..``); each image is
  listed once, in one split.

Example:
>>> raw = read_folder("/data/plates", image_size=None, seed=0)
>>> raw.splits["test"].texts[:2], raw.image_shape
(['AB12', 'C7'], (32, 96, 3))
"""

import collections
import csv
import dataclasses
import os

import numpy as np

from pipelines.data.options import SPLIT_FOLDER_NAMES

ROLES = ("train", "validation", "test")
LABELS_CSV = "labels.csv"
CSV_HEADER = ["filename", "text"]
#: Share of the training examples carved into each missing split.
CARVE_FRACTION = 0.1
#: An error names this many files, then counts the others.
MAX_NAMED = 5


@dataclasses.dataclass
class RawSplit:
    """One split before encoding: uint8 `images` or image `paths`, texts, and names."""

    texts: list
    names: list
    images: np.ndarray = None
    paths: list = None

    def take(self, indices):
        """The examples at `indices`, as a new `RawSplit`."""
        def pick(values):
            return [values[i] for i in indices]

        return RawSplit(texts=pick(self.texts), names=pick(self.names),
                        images=None if self.images is None else self.images[indices],
                        paths=None if self.paths is None else pick(self.paths))

    def __len__(self):
        return len(self.texts)

    def concatenate(self, other):
        """This split's examples followed by `other`'s, as a new `RawSplit`.

        Raises:
            ValueError: one split holds decoded images and the other file paths.
        """
        if (self.images is None) != (other.images is None):
            raise ValueError("cannot join a split of decoded images with one of image files")
        return RawSplit(
            texts=self.texts + other.texts, names=self.names + other.names,
            images=None if self.images is None else np.concatenate([self.images, other.images]),
            paths=None if self.paths is None else self.paths + other.paths)


@dataclasses.dataclass
class RawSplits:
    """The three splits, the image shape they decode to, and where each split came from."""

    name: str
    splits: dict
    image_shape: tuple
    origins: dict


def carve(split, roles, fraction, seed):
    """Seeded random `fraction` of `split` per role in `roles`; the rest stays train.

    Returns:
        dict role -> `RawSplit`, with "train".

    Raises:
        ValueError: too few examples to leave every split non-empty.
    """
    count = len(split)
    held_out = round(count * fraction)
    if roles and (held_out < 1 or count - held_out * len(roles) < 1):
        raise ValueError(f"{count} training examples are too few to carve {'/'.join(roles)} "
                         f"splits of {fraction:g} of them each; give those splits their own "
                         f"folders with a {LABELS_CSV}, or more examples")
    order = np.random.default_rng(seed).permutation(count)
    parts = {}
    for position, role in enumerate(roles):
        parts[role] = split.take(sorted(order[position * held_out:(position + 1) * held_out]))
    parts["train"] = split.take(sorted(order[len(roles) * held_out:]))
    return parts


# ---------------------------------------------------------------------------- tfds


def read_tfds(name, data_dir, offline, seed):
    """All splits of a tfds `(Image, Text)` dataset as uint8 arrays and str texts.

    Args:
        name: builder name, optionally with "/config" and ":version".
        data_dir: tfds data directory (None: tfds' default).
        offline: refuse to download (builders that need no download still prepare).
        seed: seeds carving a missing validation or test split.

    Raises:
        ValueError: unknown dataset, not prepared offline, or not `(Image, Text)`.
    """
    import tensorflow_datasets as tfds

    import pipelines.data.digit_strings  # noqa: F401  (registers digit_strings)
    from pipelines.data.tfds_source import ensure_prepared, tfds_builder

    builder = tfds_builder(name, name, data_dir)
    ensure_prepared(builder, name, data_dir, offline)
    keys = builder.info.supervised_keys or (None, None)
    features = builder.info.features
    if len(keys) != 2 or not (isinstance(features[keys[0]], tfds.features.Image)
                              and isinstance(features[keys[1]], tfds.features.Text)):
        raise ValueError(f"source {name!r} is not an image-to-text dataset: expected supervised "
                         f"keys (Image, Text), got {keys!r}")
    available = [split for split in builder.info.splits]
    present = {role: next((s for s in (role, *SPLIT_FOLDER_NAMES.get(role, ()))
                           if s in available), None) for role in ROLES}
    if present["train"] is None:
        raise ValueError(f"source {name!r} has splits {available}: expected a 'train' split")
    splits = {role: _tfds_split(builder, split, role)
              for role, split in present.items() if split is not None}
    origins = {role: split for role, split in present.items() if split is not None}
    splits, origins = _complete(splits, origins, seed)
    image_shape = tuple(int(d) for d in splits["train"].images.shape[1:])
    return RawSplits(builder.name, splits, image_shape, origins)


def _tfds_split(builder, split, role):
    import tensorflow_datasets as tfds

    images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                                      as_supervised=True))
    texts = [label.decode("utf-8") for label in labels]
    names = [f"{builder.name} {split} example {i}" for i in range(len(texts))]
    return RawSplit(texts=texts, names=names, images=np.asarray(images, np.uint8))


def _complete(splits, origins, seed):
    """Carves the missing validation / test splits from train."""
    missing = tuple(role for role in ROLES if role not in splits)
    if missing:
        parts = carve(splits["train"], missing, CARVE_FRACTION, seed)
        for role in missing:
            origins[role] = f"carved from {origins['train']} ({CARVE_FRACTION:g})"
        splits.update(parts)
    return {role: splits[role] for role in ROLES}, {role: origins[role] for role in ROLES}


# -------------------------------------------------------------------------- folder


def find_label_files(root):
    """{role: labels.csv path} of a folder dataset (see the module docstring).

    Raises:
        ValueError: not a folder, or no labels.csv where one is expected.
    """
    if not os.path.isdir(root):
        raise ValueError(f"dataset folder {root!r} does not exist or is not a directory")
    top = os.path.join(root, LABELS_CSV)
    if os.path.isfile(top):
        return {"train": top}
    found = {}
    for role in ROLES:
        for folder in SPLIT_FOLDER_NAMES.get(role, (role,)):
            path = os.path.join(root, folder, LABELS_CSV)
            if os.path.isfile(path):
                found.setdefault(role, path)
    if "train" not in found:
        raise ValueError(f"dataset folder {root!r} has no {LABELS_CSV}: expected {top} or "
                         f"{os.path.join(root, 'train', LABELS_CSV)} (columns filename,text)")
    return found


def inside_folder(filename):
    """Whether `filename` is relative and stays inside its folder (no absolute path, no "..").

    Example:
    >>> inside_folder("plates/a.png"), inside_folder("../a.png"), inside_folder("/a.png")
    (True, False, False)
    """
    normal = os.path.normpath(filename)
    return not (os.path.isabs(filename) or normal == os.pardir
                or normal.startswith(os.pardir + os.sep))


def read_labels_csv(path):
    """`RawSplit` of one labels.csv: image paths (checked to exist), texts, names.

    Raises:
        ValueError: wrong header, a row without two fields, an image name
            outside the csv's folder, a missing image, an image listed twice or
            an empty label; names the file and line.
    """
    folder = os.path.dirname(path)
    try:
        # utf-8-sig: the byte order mark Excel's "CSV UTF-8" writes first is no header text.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if not rows or [cell.strip() for cell in rows[0]] != CSV_HEADER:
        raise ValueError(f"{path}: first line {rows[0] if rows else []!r}; expected the header "
                         f"{','.join(CSV_HEADER)}")
    texts, names, paths = [], [], []
    listed = {}  # resolved image path -> (line, file name) of its first row
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path} line {line}"
        if len(row) != 2:
            raise ValueError(f"{where}: {len(row)} fields {row!r}; expected filename,text")
        filename, text = row
        if not text:
            raise ValueError(f"{where} ({filename}): empty label; expected at least one character")
        if not inside_folder(filename):
            raise ValueError(f"{where}: image name {filename!r} is outside {folder or '.'}; "
                             f"expected a name relative to the {LABELS_CSV} folder "
                             "(sub-folders allowed, no absolute path or '..')")
        image_path = os.path.join(folder, filename)
        if not os.path.isfile(image_path):
            raise ValueError(f"{where}: image {filename!r} not found in {folder}")
        first = listed.setdefault(os.path.realpath(image_path), (line, filename))
        if first[0] != line:
            also = "" if first[1] == filename else f" (as {first[1]!r} on line {first[0]})"
            raise ValueError(f"{path} lines {first[0]} and {line} both list image "
                             f"{filename!r}{also}; expected each image once, with one label")
        texts.append(text)
        names.append(f"{where} ({filename})")
        paths.append(image_path)
    if not texts:
        raise ValueError(f"{path} lists no images; expected rows filename,text")
    return RawSplit(texts=texts, names=names, paths=paths)


def read_folder(root, image_size, seed):
    """Every labels.csv of `root`, with each image file checked; a `RawSplits`.

    Args:
        root: the dataset folder.
        image_size: (height, width) to resize every image to, or None: all
            images must then share one size.
        seed: seeds carving missing splits.

    Raises:
        ValueError: see `read_labels_csv`; one image in two splits, undecodable
            images, and images of another size than the others (without
            `image_size`), named.
    """
    files = find_label_files(root)
    splits = {role: read_labels_csv(path) for role, path in files.items()}
    origins = {role: os.path.relpath(path, root) for role, path in files.items()}
    check_distinct_splits(splits)
    all_paths = [p for split in splits.values() for p in split.paths]
    image_shape = check_images(all_paths, image_size, root)
    splits, origins = _complete(splits, origins, seed)
    name = os.path.basename(os.path.normpath(root)) or "dataset"
    return RawSplits(name, splits, image_shape, origins)


def check_distinct_splits(splits):
    """Raises ValueError naming both rows when one image file is listed by two splits.

    Args:
        splits: dict role -> `RawSplit` of image paths (`read_labels_csv`).
    """
    listed = {}  # resolved image path -> name of its first row
    for split in splits.values():
        for path, name in zip(split.paths, split.names):
            resolved = os.path.realpath(path)
            if resolved in listed:
                raise ValueError(f"{listed[resolved]} and {name} are the same image file; "
                                 "expected each image in one split only")
            listed[resolved] = name


def _named(items, root):
    shown = ", ".join(f"{os.path.relpath(path, root)} ({why})" for path, why in items[:MAX_NAMED])
    more = len(items) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def check_images(paths, image_size, root):
    """Checks every file decodes; returns the `(H, W, C)` they are decoded to.

    Raises:
        ValueError: files that are not decodable images; without `image_size`,
            files whose size differs from the most common one.
    """
    from pipelines.data.image_scan import choose_image_shape, scan_images

    headers, bad = scan_images(paths)
    if bad:
        raise ValueError(f"dataset folder {root!r}: {len(bad)} of {len(paths)} image files cannot "
                         f"be decoded: {_named(bad, root)}")
    image_shape = choose_image_shape(headers, image_size)
    if image_size is None:
        odd = [(h.path, f"{h.height}x{h.width}") for h in headers
               if (h.height, h.width) != image_shape[:2]]
        if odd:
            sizes = collections.Counter((h.height, h.width) for h in headers)
            raise ValueError(
                f"dataset folder {root!r}: {len(odd)} images are not {image_shape[0]}x"
                f"{image_shape[1]} like the other {sizes[image_shape[:2]]}: {_named(odd, root)}; "
                "expected one image size (or pass --image-size H,W to resize them all)")
    return image_shape
