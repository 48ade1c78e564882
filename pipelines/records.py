"""Sharded TFRecord datasets written by `keras-vit prepare`, and their reader.

Layout of a prepared folder::

    OUT/metadata.json                      name, class names, image shape, files
    OUT/train-00000-of-00004.tfrecord      tf.train.Example records:
    ...                                      image: encoded JPEG/PNG bytes
    OUT/validation-00000-of-00004.tfrecord   label: int64 class index
    OUT/test-...

Images stay encoded (small files; decoding is input work that scales with
workers or a tf.data service) and are decoded by `pipelines.data.images.
decode_image`, the one decoding path of keras-vit. Splits are sharded so that
workers read disjoint files (file-level sharding) in parallel (interleave).

A damaged file is never skipped silently: `metadata.json` records each file's
size and number of records; a file of the wrong size fails before reading,
and a record that does not read (CRC mismatch, truncation) fails when its
file ends, naming the file.

Example:
    >>> data = tfrecord_datasets("/data/digits-records", batch_size=64)
    >>> data.info.class_names[:3]
    ['0', '1', '2']
"""

import json
import os

import tensorflow as tf

from pipelines.data import DatasetInfo, Datasets
from pipelines.data.images import decode_image
from pipelines.data.stages import training_options

AUTOTUNE = tf.data.AUTOTUNE
METADATA = "metadata.json"
FORMAT = "keras-vit-tfrecord"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(split, index, shards):
    """File name of shard `index` of `shards` of a split, e.g. train-00001-of-00004.tfrecord."""
    return f"{split}-{index:05d}-of-{shards:05d}.tfrecord"


def encode_example(image_bytes, label):
    """One serialized `tf.train.Example` (encoded image bytes, int label)."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def is_prepared(path):
    """True when `path` is a folder holding a prepared `metadata.json`."""
    return tf.io.gfile.exists(os.path.join(os.fspath(path), METADATA))


def read_metadata(path):
    """The validated `metadata.json` of a prepared folder.

    Args:
        path: the folder given to `keras-vit prepare`.

    Returns:
        dict with name, image_shape, class_names, splits (split -> count and files).

    Raises:
        ValueError: a missing folder, no metadata, another format, a field that
            is missing or of the wrong type (`check_metadata`), or a listed file
            that is missing or has another size than when it was written
            (truncated), naming it.

    Example:
        >>> read_metadata("/data/digits-records")["splits"]["train"]["count"]
        1149
    """
    path = os.fspath(path)
    metadata_path = os.path.join(path, METADATA)
    expected = "expected a folder written by `keras-vit prepare SOURCE OUT`"
    if not tf.io.gfile.exists(path):
        raise ValueError(f"records folder {path!r} does not exist: {expected}")
    if not tf.io.gfile.isdir(path):
        raise ValueError(f"records folder {path!r} is a file, not a folder: {expected}")
    if not tf.io.gfile.exists(metadata_path):
        raise ValueError(f"{path!r} holds no {METADATA}: {expected}")
    with tf.io.gfile.GFile(metadata_path) as handle:
        try:
            metadata = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{metadata_path!r} is not valid JSON: {err}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{metadata_path!r}: expected a JSON object, found "
                         f"{type(metadata).__name__}")
    if metadata.get("format") != FORMAT or metadata.get("version") != FORMAT_VERSION:
        raise ValueError(f"{metadata_path!r}: expected format {FORMAT!r} version "
                         f"{FORMAT_VERSION}, found {metadata.get('format')!r} version "
                         f"{metadata.get('version')!r}")
    check_metadata(metadata, metadata_path)
    for split in SPLITS:
        for entry in metadata["splits"][split]["files"]:
            _check_file(os.path.join(path, entry["name"]), entry["bytes"])
    return metadata


def _is_count(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_metadata(metadata, where=METADATA):
    """Checks the fields of a parsed `metadata.json` that the reader relies on.

    Args:
        metadata: the parsed JSON object.
        where: the file, for the message.

    Raises:
        ValueError: one line naming `where`, the field and what is expected.

    Example:
        >>> check_metadata({"name": "x", "image_shape": "abc", ...}, "OUT/metadata.json")
        ValueError: 'OUT/metadata.json': field 'image_shape' is 'abc': expected
        [height, width, channels] positive integers
    """

    def fail(field, what):
        value = metadata
        for key in field.split("."):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        found = "is missing" if value is _MISSING else f"is {value!r}"[:200]
        raise ValueError(f"{where!r}: field {field!r} {found}: expected {what}")

    if not isinstance(metadata.get("name"), str):
        fail("name", "the dataset name, a string")
    shape = metadata.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_is_count(n, 1) for n in shape)):
        fail("image_shape", "[height, width, channels] positive integers")
    names = metadata.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        fail("class_names", "a non-empty list of distinct class-name strings")
    splits = metadata.get("splits")
    if not isinstance(splits, dict):
        fail("splits", f"an object with the splits {list(SPLITS)}")
    for split in SPLITS:
        if not isinstance(splits.get(split), dict):
            fail(f"splits.{split}", "an object with 'count' and 'files'")
        part = splits[split]
        if not _is_count(part.get("count")):
            fail(f"splits.{split}.count", "a non-negative integer (the split's images)")
        files = part.get("files")
        if not isinstance(files, list):
            fail(f"splits.{split}.files", "a list of {name, records, bytes} objects")
        for index, entry in enumerate(files):
            field = f"splits.{split}.files[{index}]"
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and entry["name"] and os.path.basename(entry["name"]) == entry["name"]
                    and _is_count(entry.get("records")) and _is_count(entry.get("bytes"))):
                raise ValueError(f"{where!r}: field {field} is {entry!r}"[:300] + ": expected "
                                 "{name: a file name in the folder, records: a non-negative "
                                 "integer, bytes: a non-negative integer}")
        total = sum(entry["records"] for entry in files)
        if total != part["count"]:
            raise ValueError(f"{where!r}: field 'splits.{split}.count' is {part['count']}, "
                             f"but its files hold {total} records: expected the sum of the "
                             "files' records")
    optional = {"split_origins": (dict, "an object"), "conversions": (str, "a string"),
                "skipped_files": (list, "a list of file names")}
    for field, (kind, what) in optional.items():
        if field in metadata and not isinstance(metadata[field], kind):
            fail(field, what)


_MISSING = object()


def _check_file(filename, expected_bytes):
    if not tf.io.gfile.exists(filename):
        raise ValueError(f"TFRecord file {filename!r} listed in {METADATA} is missing")
    size = tf.io.gfile.stat(filename).length
    if size != expected_bytes:
        raise ValueError(f"TFRecord file {filename!r} is truncated or damaged: {size} bytes, "
                         f"{expected_bytes} when written")


def dataset_info(metadata):
    """The `pipelines.data.DatasetInfo` of a prepared folder's metadata."""
    splits = metadata["splits"]
    return DatasetInfo(
        name=metadata["name"], image_shape=tuple(metadata["image_shape"]),
        num_classes=len(metadata["class_names"]), class_names=list(metadata["class_names"]),
        num_train=splits["train"]["count"], num_validation=splits["validation"]["count"],
        num_test=splits["test"]["count"],
        # Where the source's splits came from and what decoding converts: as
        # `load_datasets` reported them for the source (absent in older folders).
        split_origins=dict(metadata.get("split_origins", {})),
        conversions=metadata.get("conversions", ""),
        skipped_files=tuple(metadata.get("skipped_files", ())))


def _checked_records(filename, expected):
    """The records of one file; fails at the file's end, naming it, if any record
    did not read (a corrupt record ends TFRecordDataset's file with an error
    that does not say which file)."""
    records = tf.data.TFRecordDataset(filename).ignore_errors(log_warning=True)
    end = tf.data.Dataset.from_tensors((tf.constant(b""), True))
    records = records.map(lambda record: (record, False)).concatenate(end)

    def count(seen, element):
        record, is_end = element
        intact = tf.logical_or(tf.logical_not(is_end), tf.equal(seen, expected))
        check = tf.debugging.Assert(intact, ["corrupt or truncated TFRecord file", filename,
                                             "records read:", seen, "written:", expected])
        with tf.control_dependencies([check]):
            return seen + 1, (tf.identity(record), is_end)

    return (records.scan(tf.constant(0, tf.int64), count)
            .filter(lambda record, is_end: tf.logical_not(is_end))
            .map(lambda record, is_end: record))


def split_records(path, split, *, input_context=None, shuffle_files_seed=None,
                  deterministic=True, metadata=None):
    """The serialized records of one split, sharded by file across input pipelines.

    Args:
        path: a prepared folder.
        split: "train", "validation" or "test".
        input_context: a `tf.distribute.InputContext`; its pipeline reads only
            every `num_input_pipelines`-th file.
        shuffle_files_seed: None keeps file order; an int shuffles the files
            (differently every epoch, identically on every worker).
        deterministic: interleave in a fixed order.
        metadata: `read_metadata(path)` if already read.

    Returns:
        A `tf.data.Dataset` of scalar tf.string records.
    """
    metadata = metadata or read_metadata(path)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    entries = metadata["splits"][split]["files"]
    files = [os.path.join(os.fspath(path), entry["name"]) for entry in entries]
    counts = [entry["records"] for entry in entries]
    pipelines = input_context.num_input_pipelines if input_context else 1
    if len(files) < pipelines:
        raise ValueError(f"{path!r} split {split!r} has {len(files)} file(s) for {pipelines} "
                         f"input pipelines: prepare it with --shards >= {pipelines}")
    pipeline = input_context.input_pipeline_id if input_context else 0
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64)))
    if pipelines > 1:
        ds = ds.shard(pipelines, pipeline)
    if shuffle_files_seed is not None:
        ds = ds.shuffle(len(files), seed=shuffle_files_seed, reshuffle_each_iteration=True)
    records = ds.interleave(_checked_records, cycle_length=min(len(files), 8),
                            num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    # Known size: batched pipelines get a cardinality (steps per epoch).
    return records.apply(tf.data.experimental.assert_cardinality(sum(counts[pipeline::pipelines])))


def min_steps_per_epoch(metadata, split, batch_size, num_input_pipelines=1):
    """Full batches every input pipeline can give when files are sharded.

    Synchronous replicas must run the same number of steps; with file-level
    sharding the pipelines hold different numbers of examples, so an epoch is
    the smallest pipeline's number of full batches.

    Args:
        metadata: `read_metadata(path)`.
        split: a split name.
        batch_size: examples per batch of one pipeline.
        num_input_pipelines: pipelines the files are sharded over.

    Returns:
        int >= 0.

    Example:
        >>> min_steps_per_epoch(read_metadata(path), "train", 32, 2)
        17
    """
    counts = [entry["records"] for entry in metadata["splits"][split]["files"]]
    return min(sum(counts[i::num_input_pipelines]) // batch_size
               for i in range(num_input_pipelines))


def parse_and_decode(image_shape):
    """Map fn: serialized record -> (float32 image of `image_shape`, int32 label)."""

    def parse(record):
        example = tf.io.parse_single_example(record, FEATURES)
        return (decode_image(example["image"], image_shape),
                tf.cast(example["label"], tf.int32))

    return parse


def _augmented(batches, augmentation, image_shape, seed):
    """`pipelines.data`'s batch augmentation, with per-batch seeds from a seeded stream."""
    if augmentation == "none":
        return batches
    from pipelines.data.augmentation import batch_augmenter

    augment = batch_augmenter(augmentation, image_shape)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((batches, seeds)).map(
        lambda batch, s: (augment(batch[0], s), batch[1]),
        num_parallel_calls=AUTOTUNE, deterministic=True)  # a partial last batch stays last


def tfrecord_datasets(path, *, batch_size, image_size=None, seed=0, shuffle_buffer=10_000,
                      drop_remainder=False, input_context=None, deterministic=False,
                      augmentation="none"):
    """Batched train / validation / test pipelines of a prepared folder.

    Train: files sharded by `input_context`, shuffled (files and examples, seeded),
    interleaved, decoded in parallel, augmented, batched, prefetched. Validation
    and test: file order, deterministic, never augmented.

    Args:
        path: a folder written by `keras-vit prepare`.
        batch_size: examples per batch (> 0): the global batch, or the
            per-replica batch with `input_context`.
        image_size: (height, width) to resize to; None keeps the prepared shape.
        seed: seeds the file and example shuffles.
        shuffle_buffer: examples in the shuffle buffer (> 0).
        drop_remainder: drop the last, smaller training batch.
        input_context: a `tf.distribute.InputContext` (from
            `distribute_datasets_from_function`) for file-level sharding.
        deterministic: fixed interleave order for training too.
        augmentation: one of `pipelines.data.AUGMENTATIONS` for the training
            split (stateless, seeded per batch as in `load_datasets`).

    Returns:
        `pipelines.data.Datasets` of (float32 images in [0, 255], int32 labels).

    Raises:
        ValueError: bad arguments or a damaged folder (see `read_metadata`).

    Example:
        >>> data = tfrecord_datasets("/data/records", batch_size=128)
        >>> model.fit(data.train, validation_data=data.validation)
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    metadata = read_metadata(path)
    info = dataset_info(metadata)
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        info.image_shape = (int(height), int(width), info.image_shape[2])
    decode = parse_and_decode(info.image_shape)
    train = split_records(path, "train", input_context=input_context, shuffle_files_seed=seed,
                          deterministic=deterministic, metadata=metadata)
    train = (train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
             .map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic))
    train = train.batch(batch_size, drop_remainder=drop_remainder)
    train = _augmented(train, augmentation, info.image_shape, seed)
    train = train.prefetch(AUTOTUNE).with_options(training_options())
    held_out = {
        split: split_records(path, split, metadata=metadata)
        .map(decode, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
        for split in ("validation", "test")}
    return Datasets(train=train, info=info, **held_out)
