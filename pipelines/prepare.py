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

PROG = "keras-vit prepare"


def prepare(source, out_dir, *, shards=4, image_size=None, data_dir=None, offline=False,
            validation_fraction=0.2, seed=0, progress=True):
    """Writes `source` as sharded TFRecords into `out_dir`.

    Args:
        source: an image folder (or "folder:PATH"), a tfds name, or "digits".
        out_dir: a folder that does not exist yet (or is empty).
        shards: files per split (>= 1; fewer for a split with fewer examples).
            Use at least as many as the workers that will read it.
        image_size: (height, width) recorded as the image shape (images are
            resized when decoded); None: the source's size.
        data_dir, offline, validation_fraction, seed: as for `load_datasets`;
            they decide the splits.
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

    from pipelines.data import load_datasets

    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"--shards {shards!r}: expected an integer >= 1")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"output folder {out_dir!r} exists and is not empty: expected a new "
                         "folder")
    info = load_datasets(source, batch_size=1, image_size=image_size, data_dir=data_dir,
                         offline=offline, validation_fraction=validation_fraction, seed=seed,
                         augment=False, cache=False).info
    examples = _encoded_examples(source, data_dir, validation_fraction, seed)
    partial = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    bar = keras.utils.Progbar(sum(n for n, _ in examples.values()), unit_name="image",
                              verbose=1 if progress else 0)
    metadata = dict(format=records.FORMAT, version=records.FORMAT_VERSION, name=info.name,
                    source=str(source), image_shape=list(info.image_shape),
                    class_names=list(info.class_names), seed=seed,
                    validation_fraction=validation_fraction, splits={})
    rng = np.random.default_rng(seed)
    for split, (count, items) in examples.items():
        metadata["splits"][split] = _write_split(partial, split, count, items, shards, rng, bar)
    with open(os.path.join(partial, records.METADATA), "w") as handle:
        json.dump(metadata, handle, indent=1)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty, checked above
    os.rename(partial, out_dir)
    return metadata


def _encoded_examples(source, data_dir, validation_fraction, seed):
    """split -> (count, iterable of (encoded image bytes, label)) in the source's order."""
    from pipelines import data

    kind, target = data._parse_source(source)
    if kind == "folder":
        _, files = data._scan_folder(target)
        parts = data._stratified_split(files, validation_fraction, seed)
        return {split: (len(paths), ((_read(p), label) for p, label in zip(paths, labels)))
                for split, (paths, labels) in parts.items()}
    import tensorflow_datasets as tfds

    builder = tfds.builder(target, data_dir=data_dir)  # prepared by load_datasets
    image_key, label_key = data._supervised_keys(builder.info, source)
    names = data._tfds_split_names(builder.info.splits, source, validation_fraction)
    result = {}
    for split, name in names.items():
        ds = builder.as_dataset(split=name, shuffle_files=False,
                                decoders={image_key: tfds.decode.SkipDecoding()})
        items = ((ex[image_key], ex[label_key]) for ex in tfds.as_numpy(ds))
        result[split] = (builder.info.splits[name].num_examples, items)
    return result


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
    files = [dict(name=n, records=c, bytes=os.path.getsize(os.path.join(out_dir, n)))
             for n, c in zip(names, counts)]
    return dict(count=len(items), files=files)


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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        metadata = prepare(args.source, args.out, shards=args.shards,
                           image_size=args.image_size, data_dir=args.data_dir,
                           offline=args.offline, validation_fraction=args.validation_fraction,
                           seed=args.seed)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s} {v['count']}" for s, v in metadata["splits"].items())
    print(f"wrote {args.out}: {counts} images of shape {tuple(metadata['image_shape'])}, "
          f"{len(metadata['class_names'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
