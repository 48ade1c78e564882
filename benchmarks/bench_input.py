"""Input pipelines alone against the training step of the job that reads them.

Four callables, interleaved round by round (order rotating):

- `digits`: 48 batches (`--quick`: 12) of `pipelines.data.load_datasets(
  "digits", augmentation="affine", batch_size=128, drop_remainder=True)`'s
  training split, pulled from a repeated iterator as `keras-vit train` pulls
  them (cache -> shuffle -> batch -> affine augmentation of the batch ->
  prefetch);
- `folder`: as many batches of an image folder the benchmark writes (2,000 PNGs of
  40x40 RGB, 10 classes; `--quick`: 400) loaded with `image_size=32`, the
  `crop` augmentation and `cache=False`, so every epoch reads, decodes,
  resizes and crops every file;
- `digits step`: one `train_on_batch` of the default digits job's model (the
  digits preset, the precision `auto` picks, XLA as the job compiles it);
- `folder step`: the same for the model `keras-vit train --dataset FOLDER`
  builds for that folder (the preset scaled to its images and their number).

Each gives images/s; ratio = pipeline images/s / the images/s of its job's
training step in the same round (target >= 5: input is never the
bottleneck). The folder pipeline's ratio to the (much faster) digits step is
printed too.
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


#: Batches per timed call: several epochs of the small splits, so the one
#: iterator start-up per call weighs little.
BATCHES_PER_CALL, QUICK_BATCHES_PER_CALL = 48, 12


def _batches(dataset, count):
    """A callable pulling `count` batches from a fresh iterator of `dataset.repeat()`.

    As the training job iterates (`model.fit(train.repeat(), ...)`). Fresh per
    call: an iterator kept between calls would fill its prefetch buffer while
    the other callables are timed, and hand those batches over for free.
    """
    def run():
        iterator = iter(dataset.repeat())
        return sum(int(next(iterator)[0].shape[0]) for _ in range(count))
    return run


def _job_train_step(dataset, data):
    """`(step callable, policy, batch size)`: one train_on_batch of the model `keras-vit train
    --dataset DATASET` builds for `data` (its preset, or the preset scaled to a folder), in
    the precision `auto` picks, compiled as the job compiles it (XLA or not)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_vit.models import vision_transformer
    from pipelines.precision import choose_precision
    from pipelines.train import TrainConfig, compile_for_training, model_kwargs
    from pipelines.training.presets import PRESETS

    config = TrainConfig(dataset=dataset).resolved(None if dataset in PRESETS else data.info)
    policy, _ = choose_precision(config.precision)
    keras.config.set_dtype_policy(policy)
    try:
        model = vision_transformer(**model_kwargs(config, data.info))
        compile_for_training(model, 1000, learning_rate=config.learning_rate,
                             jit_compile=config.xla)
    finally:
        keras.config.set_dtype_policy("float32")
    # Pixel values do not change the step's time: uniform noise of the data's shape.
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (config.batch_size, *data.info.image_shape)),
                         tf.float32)
    labels = tf.one_hot(rng.integers(0, data.info.num_classes, config.batch_size),
                        data.info.num_classes)
    return (lambda: model.train_on_batch(images, labels)), policy, config.batch_size


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
    print(f"\n== input: tf.data throughput alone vs the training step of the job that reads "
          f"it; target ratio >= {TARGET}")
    with common.Stopwatch() as total, tempfile.TemporaryDirectory() as root:
        digits = load_datasets("digits", batch_size=BATCH, augmentation="affine",
                               drop_remainder=True, seed=0)
        write_png_folder(root, count)
        folder = load_datasets(root, batch_size=BATCH, image_size=FOLDER_IMAGE_SIZE,
                               augmentation="crop", cache=False, seed=0, drop_remainder=True)
        digits_step, policy, digits_batch = _job_train_step("digits", digits)
        folder_step, folder_policy, folder_batch = _job_train_step(root, folder)
        batches = QUICK_BATCHES_PER_CALL if quick else BATCHES_PER_CALL
        calls = {"digits": _batches(digits.train, batches),
                 "folder": _batches(folder.train, batches),
                 "digits step": digits_step, "folder step": folder_step}
        images_per_call = {"digits": calls["digits"](), "folder": calls["folder"](),
                           "digits step": digits_batch, "folder step": folder_batch}
        timings = common.interleave(calls, **timing)
    rates = {name: [images_per_call[name] / s for s in t["wall"]]
             for name, t in timings.items()}
    rows, records = [], {}
    for name in ("digits", "folder"):
        # The target's ratio: against the step of the job that reads this pipeline.
        ratios = [r / t for r, t in zip(rates[name], rates[f"{name} step"])]
        digits_ratios = [r / t for r, t in zip(rates[name], rates["digits step"])]
        records[name] = dict(images_per_s=statistics.median(rates[name]),
                             step_images_per_s=statistics.median(rates[f"{name} step"]),
                             ratio=statistics.median(ratios), ratios=ratios,
                             ratio_to_digits_step=statistics.median(digits_ratios),
                             images_per_call=images_per_call[name])
        rows.append([name, images_per_call[name], f"{records[name]['images_per_s']:.0f}",
                     f"{records[name]['step_images_per_s']:.0f}", f"{records[name]['ratio']:.1f}",
                     "yes" if records[name]["ratio"] >= TARGET else "no",
                     f"{records[name]['ratio_to_digits_step']:.1f}"])
    print(common.format_table(["pipeline", "images/call", "pipeline img/s",
                               "its job's step img/s", "ratio", f">={TARGET:g}",
                               "ratio to the digits step"], rows))
    print(f"(steps: the digits preset in {policy}, batch {digits_batch}; the preset scaled to "
          f"the folder in {folder_policy}, batch {folder_batch})")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("input", dict(
        quick=quick, target=TARGET,
        config=dict(batch=BATCH, folder_images=count, folder_file_size=FOLDER_FILE_SIZE,
                    folder_image_size=FOLDER_IMAGE_SIZE, timing=timing, train_policy=policy,
                    folder_train_policy=folder_policy, digits_step_batch=digits_batch,
                    folder_step_batch=folder_batch),
        results=records, timings=timings, seconds=total.seconds))
    return True, False
