"""Input pipelines alone against what the default training step consumes.

Three callables, interleaved round by round (order rotating):

- `digits`: one full epoch of `pipelines.data.load_datasets("digits",
  augmentation="affine", batch_size=128, drop_remainder=True)`'s training split
  through a fresh iterator (what `keras-vit train` iterates each epoch: cache
  -> shuffle -> affine augmentation -> batch -> prefetch);
- `folder`: one epoch of an image folder the benchmark writes (2,000 PNGs of
  40x40 RGB, 10 classes; `--quick`: 400) loaded with `image_size=32` and the
  `crop` augmentation and `cache=False`, so every epoch decodes, resizes and
  crops every file;
- `train step`: one `train_on_batch` of the default digits job's model (the
  digits preset, the precision `auto` picks, XLA as the job compiles it) on a
  batch of 128.

Each gives images/s; ratio = pipeline images/s / training-step images/s of the
same round (target >= 5: input is never the bottleneck).
"""

import os
import tempfile

from benchmarks import common

TARGET = 5.0
BATCH = 128  # the digits preset's batch size
FOLDER_IMAGES, QUICK_FOLDER_IMAGES = 2000, 400
FOLDER_FILE_SIZE, FOLDER_IMAGE_SIZE = 40, 32
NUM_CLASSES = 10


def write_png_folder(root, count, size=FOLDER_FILE_SIZE, seed=0):
    """Writes `count` PNGs (`size` x `size` RGB) in `NUM_CLASSES` class sub-folders of `root`.

    Each class is a different mean colour plus noise, so the files are real,
    decodable, distinct images.

    Example:
        >>> write_png_folder("/tmp/pngs", 20)
        '/tmp/pngs'
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % NUM_CLASSES
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        pixels = np.clip(rng.normal(25 * label, 40, (size, size, 3)), 0, 255).astype("uint8")
        tf.io.write_file(os.path.join(folder, f"{index:05d}.png"), tf.io.encode_png(pixels))
    return root


def _epoch(dataset):
    """A callable iterating one epoch of `dataset` through a fresh iterator; returns images."""
    def run():
        count = 0
        for images, _ in dataset:
            count += int(images.shape[0])
        return count
    return run


def _default_train_step(data):
    """`(step callable, policy)`: one train_on_batch of the default digits job's model."""
    import keras
    import tensorflow as tf

    from keras_vit.models import vision_transformer
    from pipelines.precision import choose_precision
    from pipelines.train import TrainConfig, compile_for_training, model_kwargs

    config = TrainConfig().resolved()
    policy, _ = choose_precision(config.precision)
    keras.config.set_dtype_policy(policy)
    try:
        model = vision_transformer(**model_kwargs(config, data.info))
        compile_for_training(model, 1000, learning_rate=config.learning_rate,
                             jit_compile=config.xla)
    finally:
        keras.config.set_dtype_policy("float32")
    images, labels = next(iter(data.train))
    one_hot = tf.one_hot(labels, data.info.num_classes)
    return (lambda: model.train_on_batch(images, one_hot)), policy


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the input benchmark, prints its table, writes `runs/bench/input.json`.

    Returns:
        `(True, False)`: a ratio below the target is reported, never a failure.
    """
    import statistics

    from pipelines.data import load_datasets

    timing = dict(min_rounds=repeats or (3 if quick else 9), warmup=1 if quick else 2,
                  min_time=0.5 if quick else 5.0)
    count = QUICK_FOLDER_IMAGES if quick else FOLDER_IMAGES
    print(f"\n== input: tf.data throughput alone vs the default digits training step "
          f"(batch {BATCH}); target ratio >= {TARGET}")
    with common.Stopwatch() as total, tempfile.TemporaryDirectory() as root:
        digits = load_datasets("digits", batch_size=BATCH, augmentation="affine",
                               drop_remainder=True, seed=0)
        write_png_folder(root, count)
        folder = load_datasets(root, batch_size=BATCH, image_size=FOLDER_IMAGE_SIZE,
                               augmentation="crop", cache=False, seed=0)
        step, policy = _default_train_step(digits)
        images_per_call = {"digits": _epoch(digits.train)(), "folder": _epoch(folder.train)(),
                           "train step": BATCH}
        timings = common.interleave({"digits": _epoch(digits.train),
                                     "folder": _epoch(folder.train), "train step": step},
                                    **timing)
    rates = {name: [images_per_call[name] / s for s in t["wall"]]
             for name, t in timings.items()}
    rows, records = [], {}
    for name in ("digits", "folder"):
        ratios = [r / t for r, t in zip(rates[name], rates["train step"])]
        records[name] = dict(images_per_s=statistics.median(rates[name]),
                             ratio=statistics.median(ratios), ratios=ratios,
                             images_per_call=images_per_call[name])
        rows.append([name, images_per_call[name], f"{records[name]['images_per_s']:.0f}",
                     f"{statistics.median(rates['train step']):.0f}",
                     f"{records[name]['ratio']:.1f}",
                     "yes" if records[name]["ratio"] >= TARGET else "no"])
    print(common.format_table(["pipeline", "images/epoch", "pipeline img/s",
                               f"train step img/s ({policy})", "ratio", f">={TARGET:g}"], rows))
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    path = common.write_results("input", dict(
        quick=quick, target=TARGET,
        config=dict(batch=BATCH, folder_images=count, folder_file_size=FOLDER_FILE_SIZE,
                    folder_image_size=FOLDER_IMAGE_SIZE, timing=timing, train_policy=policy),
        results=records, timings=timings, seconds=total.seconds))
    print(f"results: {path.relative_to(common.REPO_ROOT)}")
    return True, False
