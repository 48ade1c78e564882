"""`keras-vit prepare SOURCE OUT --shards N`: a data source as sharded TFRecords.

SOURCE is anything `pipelines.data.load_datasets` reads (an image folder, a
tfds name, "digits"); OUT receives, per split, N TFRecord files of encoded
image bytes and labels plus `metadata.json` (see `pipelines.records`). The
splits are those `load_datasets` uses (same validation fraction and seed), so
training from OUT sees the same examples as training from SOURCE.

Nothing is half-written: files go to `OUT.partial` and the folder is renamed
to OUT once complete.

Example:
    keras-vit prepare ~/photos /data/photos-records --shards 16
    keras-vit prepare cifar10 /data/cifar10-records --data-dir ~/tfds --offline
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

from pipelines import records
from pipelines.cli_args import image_size as image_size_arg
from pipelines.data import BAD_IMAGE_POLICIES

PROG = "keras-vit prepare"


def prepare(source, out_dir, *, shards=4, image_size=None, data_dir=None, offline=False,
            validation_fraction=0.2, seed=0, on_bad_image="error", progress=True):
    """Writes `source` as sharded TFRecords into `out_dir`.

    Args:
        source: an image folder (or "folder:PATH"; class folders, or train/,
            validation/ (val/), test/ split folders), a tfds name, or "digits".
        out_dir: a folder that does not exist yet (or is empty).
        shards: files per split (>= 1; fewer for a split with fewer examples).
            Use at least as many as the workers that will read it.
        image_size: (height, width) recorded as the image shape (images are
            resized when decoded); None: the source's size.
        data_dir, offline, validation_fraction, seed: as for `load_datasets`;
            they decide the splits.
        on_bad_image: image folders: "error" (a file that does not decode is
            an error naming it) or "skip" (left out, as `load_datasets` does).
        progress: show a progress bar.

    Returns:
        The metadata dict written to `out_dir/metadata.json`.

    Raises:
        ValueError: a bad argument or source, or `out_dir` not empty; nothing
            is written then.

    Example:
        >>> prepare("digits", "/tmp/digits-records", shards=2)["splits"]["test"]["count"]
        360
    """
    import keras

    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"--shards {shards!r}: expected an integer >= 1")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} is a file, not a folder: expected a new "
                         "folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} exists and is not empty: expected a new "
                         "folder")
    _check_can_create(out_dir)
    info, examples = _source_examples(source, image_size, data_dir, offline,
                                      validation_fraction, seed, on_bad_image)
    partial = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    bar = keras.utils.Progbar(sum(n for n, _ in examples.values()), unit_name="image",
                              verbose=1 if progress else 0)
    metadata = {"format": records.FORMAT, "version": records.FORMAT_VERSION,
                "name": info.name, "source": str(source),
                "image_shape": list(info.image_shape), "class_names": list(info.class_names),
                "seed": seed, "validation_fraction": validation_fraction,
                "split_origins": dict(info.split_origins), "conversions": info.conversions,
                "skipped_files": list(info.skipped_files), "splits": {}}
    rng = np.random.default_rng(seed)
    for split, (count, items) in examples.items():
        metadata["splits"][split] = _write_split(partial, split, count, items, shards, rng, bar)
    with open(os.path.join(partial, records.METADATA), "w") as handle:
        json.dump(metadata, handle, indent=1)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty, checked above
    os.rename(partial, out_dir)
    return metadata


def _check_can_create(out_dir):
    """The output folder's nearest existing ancestor must be a writable folder."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"output folder {out_dir!r} cannot be created: {parent!r} is a file, "
                         "not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out_dir!r} cannot be created: {parent!r} is not "
                         "writable")


def _source_examples(source, image_size, data_dir, offline, validation_fraction, seed,
                     on_bad_image):
    """(DatasetInfo, split -> (count, iterable of (encoded image bytes, label))).

    The splits are `load_datasets`' own: the data package's folder and tfds
    readers decide them; here only the encoded bytes are read instead of the
    decoded images.
    """
    from pipelines.data.arguments import check_arguments, parse_source

    image_size = check_arguments(batch_size=1, image_size=image_size,
                                 validation_fraction=validation_fraction, augmentation=None,
                                 seed=seed, shuffle_buffer=1, cache=False,
                                 on_bad_image=on_bad_image)
    kind, target = parse_source(source)
    if kind == "folder":
        return _folder_examples(target, image_size, validation_fraction, seed, on_bad_image)
    return _tfds_examples(target, source, image_size, data_dir, offline, validation_fraction,
                          seed)


def _folder_examples(root, image_size, validation_fraction, seed, on_bad_image):
    from pipelines.data import folder

    # Scans every file once (bad-file policy, image shape) and carves the splits.
    info = folder.folder_splits(root, image_size, validation_fraction, seed, on_bad_image).info
    # The same paths, as folder_splits lists them (no second scan: its skipped files).
    given = folder.find_split_folders(root)
    class_names, files = folder._read_given_splits(root, given)
    if info.skipped_files:
        files = folder._drop_files(files, set(info.skipped_files), class_names, root)
    parts, _ = folder._complete_splits(files, given, validation_fraction, seed)
    examples = {split: (len(paths), ((_read(p), label) for p, label in zip(paths, labels)))
                for split, (paths, labels) in parts.items()}
    return info, examples


def _tfds_examples(name, source, image_size, data_dir, offline, validation_fraction, seed):
    import tensorflow_datasets as tfds

    from pipelines.data import tfds_source

    # Prepares the dataset (or fails offline) and checks it is image classification.
    info = tfds_source.tfds_splits(name, source, image_size, data_dir, offline,
                                   validation_fraction, seed).info
    builder = tfds.builder(name, data_dir=data_dir)
    image_key, label_key = tfds_source._supervised_keys(builder.info, source)
    names = tfds_source.tfds_split_names(builder.info.splits, source, validation_fraction)
    examples = {}
    for split, split_name in names.items():
        ds = builder.as_dataset(split=split_name, shuffle_files=False,
                                decoders={image_key: tfds.decode.SkipDecoding()})
        items = ((ex[image_key], ex[label_key]) for ex in tfds.as_numpy(ds))
        examples[split] = (getattr(info, f"num_{split}"), items)
    return info, examples


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _write_split(out_dir, split, count, items, shards, rng, bar):
    """Round-robin over `shards` files in a seeded order (every file holds every class)."""
    shards = max(1, min(shards, count))
    items = list(items)
    names = [records.shard_name(split, i, shards) for i in range(shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, n))
               for n in names]
    counts = [0] * shards
    try:
        for position, index in enumerate(rng.permutation(len(items))):
            image_bytes, label = items[index]
            writers[position % shards].write(records.encode_example(image_bytes, label))
            counts[position % shards] += 1
            bar.add(1)
    finally:
        for writer in writers:
            writer.close()
    files = [{"name": n, "records": c, "bytes": os.path.getsize(os.path.join(out_dir, n))}
             for n, c in zip(names, counts)]
    return {"count": len(items), "files": files}


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write an image folder or a tensorflow-datasets dataset as sharded "
                    "TFRecord files (encoded images, labels) plus metadata.json, for "
                    "`keras-vit train --dataset tfrecord:OUT` on many workers.")
    parser.add_argument("source", help="image folder (one sub-folder per class), tfds name "
                                       "or 'digits'")
    parser.add_argument("out", help="new output folder")
    parser.add_argument("--shards", type=int, default=4,
                        help="files per split (at least the number of workers reading it)")
    parser.add_argument("--image-size", type=image_size_arg,
                        help="HEIGHT,WIDTH recorded as the image shape (resized on decoding)")
    parser.add_argument("--data-dir", help="tensorflow-datasets data directory")
    parser.add_argument("--offline", action="store_true",
                        help="never download: the tfds dataset must be prepared already")
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share carved out for validation/test where the source has none")
    parser.add_argument("--seed", type=int, default=0, help="split and shard-order seed")
    parser.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="error",
                        help="image folders: a file that does not decode is an error, or "
                             "is left out")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        metadata = prepare(args.source, args.out, shards=args.shards,
                           image_size=args.image_size, data_dir=args.data_dir,
                           offline=args.offline, validation_fraction=args.validation_fraction,
                           seed=args.seed, on_bad_image=args.on_bad_image)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    files = {split: len(part["files"]) for split, part in metadata["splits"].items()}
    if any(n < args.shards for n in files.values()):
        written = ", ".join(f"{split} {n}" for split, n in files.items())
        print(f"note: --shards {args.shards}, but files written per split: {written} (a split "
              "with fewer images than shards gets one file per image)", flush=True)
    counts = ", ".join(f"{s} {v['count']}" for s, v in metadata["splits"].items())
    print(f"wrote {args.out}: {counts} images of shape {tuple(metadata['image_shape'])}, "
          f"{len(metadata['class_names'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
