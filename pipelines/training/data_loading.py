"""The training job's data: the run's pipelines, their report, and the SVC baseline's plain copy.

`pipelines.data` reports what it does to an image folder (files skipped by
`--on-bad-image skip`) through the `pipelines.data` logger. The job reads the
data twice (the SVC baseline needs the training split without augmentation),
so it collects those records instead of letting each read print them: the
first read's are shown once, in the job's log, the second's dropped.

Example:
>>> data, warnings, config = load_run_data(config)
>>> for line in describe_data(data.info, warnings): print(line)
"""

import contextlib
import dataclasses
import logging

DATA_LOGGER = "pipelines.data"
#: Share of each class carved per split a source lacks (`load_datasets`' default).
VALIDATION_FRACTION = 0.2


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collected_data_warnings():
    """Collects the `pipelines.data` logger's warnings instead of printing them.

    Yields:
        list of str, filled as warnings are logged inside the block.

    Example:
    >>> with collected_data_warnings() as warnings:
    ...     data = load_datasets("folder:/data/pets", on_bad_image="skip")
    """
    logger = logging.getLogger(DATA_LOGGER)
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def load_run_data(config, requested=None):
    """The run's datasets (training split augmented, whole batches), data warnings and config.

    The source is read first; a dataset without a named preset then has its
    preset scaled to the data (`TrainConfig.resolved(info)`) before the batch
    size and augmentation are applied.

    Args:
        config: a resolved `TrainConfig`.
        requested: the config as given (unset options None), to resolve again
            from the data's `DatasetInfo`; None keeps `config` as it is.

    Returns:
        `(pipelines.data.Datasets, list of warning messages, the final resolved config)`.

    Raises:
        ValueError: a bad source; with `--on-bad-image error`, a folder holding
            files that cannot be decoded (named); options the data-scaled preset
            makes invalid (`check_config`).
    """
    from pipelines.data.arguments import check_image_size
    from pipelines.data.loading import batch_splits, read_source
    from pipelines.training.config import check_config

    with collected_data_warnings() as warnings:
        splits = read_source(config.dataset, image_size=check_image_size(config.image_size),
                             data_dir=config.data_dir, offline=config.offline,
                             validation_fraction=VALIDATION_FRACTION, seed=config.seed,
                             on_bad_image=config.on_bad_image)
    if requested is not None and config.preset_needs_data:
        # The checkpoint's image size (`--init`) was filled in after the first resolution.
        config = dataclasses.replace(requested, image_size=config.image_size).resolved(
            splits.info)
        check_config(config)
    data = batch_splits(fit_splits(splits, config.fit_on), batch_size=config.batch_size,
                        augmentation=config.augmentation, seed=config.seed,
                        deterministic=config.deterministic, drop_remainder=True)
    # The source's split sizes, whatever the fit draws from (reported as they are).
    return dataclasses.replace(data, info=splits.info), list(warnings), config


def fit_splits(splits, fit_on):
    """The splits a fit trains on: `splits` as they are, or validation folded into training.

    Args:
        splits: `pipelines.data.SourceSplits`.
        fit_on: "train", or "train+validation" (`--fit-on`): the training split
            becomes train followed by validation (shuffled together later), and
            `info.num_train` their sum, which sizes the shuffle buffer and cache.

    Returns:
        `SourceSplits`; validation and test are unchanged.

    Example:
    >>> fit_splits(splits, "train+validation").info.num_train
    1437
    """
    if fit_on == "train":
        return splits
    if fit_on != "train+validation":
        raise ValueError(f"--fit-on must be 'train' or 'train+validation'; received {fit_on!r}")
    info = dataclasses.replace(splits.info,
                               num_train=splits.info.num_train + splits.info.num_validation)
    files = splits.files and dict(splits.files,
                                  train=splits.files["train"] + splits.files["validation"])
    return dataclasses.replace(splits, train=splits.train.concatenate(splits.validation),
                               info=info, files=files)


def describe_fit(config, info):
    """The job's line about what the model is fitted on, or None for the training split.

    Example:
    >>> describe_fit(config, info)
    'fit on train+validation: 1437 images; no validation during training, the last epoch is kept'
    """
    if config.fit_on == "train":
        return None
    return (f"fit on train+validation: {info.num_train + info.num_validation} images; no "
            "validation during training, the last epoch is kept")


def load_plain_train(config):
    """What the run fits on (`--fit-on`), again unaugmented, for the SVC baseline.

    Same source, seed and bad-image policy as `load_run_data`, hence the same
    split; its warnings were shown by the first read and are dropped. Offline:
    the first read prepared the data.

    Returns:
        The batched training `tf.data.Dataset` (train, or train+validation).
    """
    from pipelines.data.loading import batch_splits, read_source

    with collected_data_warnings():
        splits = read_source(config.dataset, image_size=config.image_size,
                             data_dir=config.data_dir, offline=True,
                             validation_fraction=VALIDATION_FRACTION, seed=config.seed,
                             on_bad_image=config.on_bad_image)
    return batch_splits(fit_splits(splits, config.fit_on), batch_size=1024, augment=False,
                        seed=config.seed).train


def describe_data(info, warnings=()):
    """The job's lines about its data: sizes, where each split comes from, conversions, skips.

    Args:
        info: `pipelines.data.DatasetInfo`.
        warnings: messages from `load_run_data`.

    Returns:
        list of str, one log line each.

    Example:
    >>> describe_data(info)[1]
    'splits: train: train/; validation: carved from train/ (0.2 of each class); test: test/'
    """
    lines = [(f"dataset {info.name}: {info.num_train} train / {info.num_validation} "
              f"validation / {info.num_test} test images of shape {info.image_shape}, "
              f"{info.num_classes} classes")]
    if info.split_origins:
        lines.append("splits: " + "; ".join(f"{role}: {origin}" for role, origin
                                            in info.split_origins.items()))
    if info.conversions:
        lines.append(info.conversions)
    lines += [f"warning: {message}" for message in warnings]
    return lines
