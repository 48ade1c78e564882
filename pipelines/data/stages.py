"""The stages every source shares: cache -> shuffle -> batch -> augment -> prefetch.

Conventions: images leave as float32 in raw [0, 255] scale, labels int32;
validation and test are never augmented nor shuffled, and their order is
deterministic.

Example:
    >>> from pipelines.data.stages import finish
    >>> batched = finish(ds, "validation", 288, batch_size=64, cache=True)
"""

import logging

import numpy as np
import tensorflow as tf

from pipelines.data.augmentation import batch_augmenter

log = logging.getLogger("pipelines.data")

AUTOTUNE = tf.data.AUTOTUNE

#: `cache=True` keeps a split in memory only if its decoded images fit in this.
CACHE_BUDGET_BYTES = 2 * 1024**3


def finish(ds, role, num_examples, *, batch_size, cache, training=False,
           augmentation="none", seed=0, deterministic=True, shuffle_buffer=1,
           drop_remainder=False, files=None):
    """Cache -> (train: shuffle) -> batch -> float32 (train: augment) -> prefetch.

    A training split read from files (`files`) that is not cached skips the
    first three: its file names are shuffled and each batch of files decoded
    at once (`FileSplit.batches`), so no buffer of decoded images has to fill
    at every epoch.

    Args:
        ds: unbatched (image, label) dataset of one split.
        role: "train", "validation" or "test" (names the on-disk cache files).
        num_examples: examples in `ds` (sizes the cache and the shuffle buffer).
        batch_size, cache, augmentation, seed, deterministic, shuffle_buffer,
        drop_remainder: as for `load_datasets`.
        training: shuffle and augment (the training split only).
        files: the split's `pipelines.data.folder.FileSplit`, or None.

    Returns:
        The batched, prefetched dataset.
    """
    drop_remainder = drop_remainder and num_examples >= batch_size
    cached = caches(ds, role, num_examples, cache)
    if training and files is not None and not cached:
        ds = files.batches(batch_size, seed=seed, drop_remainder=drop_remainder)
    else:
        if cached:
            # A path prefix caches on disk (one file set per split), "" in memory.
            ds = ds.cache(f"{cache}-{role}" if isinstance(cache, str) else "")
        if training:
            ds = ds.shuffle(min(shuffle_buffer, max(num_examples, 1)), seed=seed,
                            reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augmentation != "none":
        # Whole batches at once (one warp per batch: pipelines.data.augmentation),
        # stateless ops fed with per-batch seeds from a seeded random stream:
        # reproducible even with parallel map, and different every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        augment = batch_augmenter(augmentation, ds.element_spec[0].shape[1:])
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (augment(tf.cast(batch[0], tf.float32), s), batch[1]),
            # Batches keep their order (a partial last batch stays last); they
            # cost the same, so ordering them holds nothing up.
            num_parallel_calls=AUTOTUNE, deterministic=True,
        )
    else:
        ds = ds.map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    ds = ds.prefetch(AUTOTUNE)
    options = training_options() if training else tf.data.Options()
    # Validation/test order is part of the contract ("never shuffled").
    options.deterministic = bool(deterministic) or not training
    return ds.with_options(options)


def training_options():
    """`tf.data.Options` for a training pipeline that one `fit` iterates from start to end.

    tf.data's autotuning is off. Its model thread is joined when the
    iterator is destroyed, and for an iterator that lived through a whole
    `fit` that join blocked the main thread for up to ~20 s when `fit`
    returned, in about one run in three (py-spy: `RootDataset::Iterator::
    ~Iterator` waiting in `UnboundedThreadPool::LogicalThreadWrapper`;
    benchmarks/README.md, `job`). Without it, AUTOTUNE parallelism is the
    number of CPU cores and prefetch buffers size themselves.

    Example:
    >>> train = train.with_options(training_options())
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def even_batch_size(num_examples, batch_size):
    """The batch size that splits `num_examples` into as many batches as `batch_size` does, evenly.

    An evaluation split batched at 128 with 288 examples ends with a batch of
    32, and an XLA-compiled test step compiles a second time for that shape;
    batches of 96 need one compile. When no size divides evenly the last batch
    is still the only smaller one, and as close to the others as it can be.

    Args:
        num_examples: int >= 0.
        batch_size: int > 0, the largest batch size wanted.

    Returns:
        `ceil(num_examples / ceil(num_examples / batch_size))` (`batch_size` for an empty split).

    Example:
        >>> even_batch_size(288, 128), even_batch_size(256, 128), even_batch_size(290, 128)
        (96, 128, 97)
    """
    if num_examples <= 0:
        return batch_size
    batches = -(-num_examples // batch_size)
    return -(-num_examples // batches)


def caches(ds, role, num_examples, cache):
    """Whether `finish` caches `ds`: on disk (a path prefix), or in memory when it fits.

    Example:
        >>> caches(ds, "train", 1149, True)  # 1149 8x8 images: far below the budget
        True
    """
    if cache is False:
        return False
    if isinstance(cache, str):
        return True
    spec = ds.element_spec[0]
    nbytes = num_examples * int(np.prod(spec.shape)) * spec.dtype.size
    if nbytes > CACHE_BUDGET_BYTES:
        log.info("not caching %s split: %.1f GiB > budget", role, nbytes / 1024**3)
        return False
    return True
