"""`keras-vit train` on TensorFlow's distributed engine: multi-worker, TPU, TFRecords, tf.data service.

`pipelines.training.job.train` hands a run here when `uses_custom_loop(config)`:
`--distribute multi_worker` or `tpu`, `--dataset tfrecord:PATH` (or a folder
written by `keras-vit prepare`), or `--data-service`. The run is the training
job's: the same options, ViT, recipe (`compiled_model`: AdamW, warm-up +
cosine, label-smoothed cross-entropy, clipnorm), run folder rules, evaluation
and export; only the fit differs: `pipelines.distributed.fit_distributed`, a
custom loop, because Keras 3 `fit` does not train under
`MultiWorkerMirroredStrategy` (see docs/distributed.md).

Order of a multi-worker start (TensorFlow's rules):

1. TF_CONFIG is validated and the chief named, in Python;
2. the chief alone checks its outputs and plans its run folder (a finished run
   is refused, a resume must use the run's options), before anything else;
3. the strategy is created before any TensorFlow op (workers meet with a
   bounded `--startup-timeout`), then the global batch is checked against the
   replicas: every worker fails the same way, before anything is written;
4. seed, data, model under the strategy, `fit_distributed` (history, best
   weights, backup/resume, TensorBoard: the chief in the run folder, the others
   in a temporary folder they remove);
5. the chief evaluates, plots, saves best.keras and metrics.json and exports.

Every worker logs `final weights sha256: ...`: equal lines mean identical
weights on all workers.

Example:
    TF_CONFIG='{"cluster":{"worker":["127.0.0.1:23456","127.0.0.1:23457"]},
                "task":{"type":"worker","index":0}}' \\
      keras-vit train --distribute multi_worker --epochs 3     # and index 1
"""

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from pipelines.onednn import onednn_enabled
from pipelines.training.config import model_kwargs
from pipelines.training.fit import FitOutcome, compiled_model
from pipelines.training.preflight import check_outputs
from pipelines.training.run_folder import (
    METRICS,
    RUN_CONFIG,
    plan_run_dir,
    prepare_run_dir,
)

#: `--distribute` values that only the custom loop trains.
CUSTOM_LOOP_STRATEGIES = ("multi_worker", "tpu")
RECORDS_PREFIX = "tfrecord:"


def records_path(dataset):
    """The prepared folder a `--dataset` value names, or None for other sources.

    Example:
    >>> records_path("tfrecord:/data/cifar10-records")
    '/data/cifar10-records'
    """
    from pipelines import records

    text = os.fspath(dataset) if isinstance(dataset, (str, os.PathLike)) else ""
    if text.startswith(RECORDS_PREFIX):
        return text[len(RECORDS_PREFIX):]
    if os.path.isdir(text) and records.is_prepared(text):
        return text
    return None


def uses_custom_loop(config):
    """Whether a resolved config trains with `fit_distributed` (this module).

    Example:
    >>> uses_custom_loop(TrainConfig(distribute="multi_worker").resolved())
    True
    """
    return bool(config.distribute in CUSTOM_LOOP_STRATEGIES or config.data_service
                or config.tpu is not None or config.startup_timeout is not None
                or records_path(config.dataset))


def check_distributed_options(config):
    """`--tpu`, `--startup-timeout`, `--data-service` and the records folder, before any op.

    Raises:
        ValueError: one line naming the flag and the value.
    """
    from pipelines import records
    from pipelines.data_service import check_dispatcher

    if config.tpu is not None and config.distribute != "tpu":
        raise ValueError(f"--tpu {config.tpu!r} needs --distribute tpu; received "
                         f"--distribute {config.distribute!r}")
    if config.startup_timeout is not None:
        if config.distribute != "multi_worker":
            raise ValueError(f"--startup-timeout only applies to --distribute multi_worker; "
                             f"received --distribute {config.distribute!r}")
        if not config.startup_timeout > 0:
            raise ValueError(f"--startup-timeout {config.startup_timeout!r}: expected "
                             "seconds > 0")
    if config.data_service:
        check_dispatcher(config.data_service)  # a bad address, or nothing answering
    path = records_path(config.dataset)
    if path is not None:
        records.read_metadata(path)  # names a missing, foreign or truncated file


def _check_resumable(config, plan):
    """A run folder interrupted under Keras `fit` has another backup format: refuse it."""
    if plan != "resume":
        return
    try:
        with open(os.path.join(config.output_dir, RUN_CONFIG)) as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return
    if saved.get("distribute") is not None and not uses_custom_loop(
            dataclasses.replace(config, **{k: saved.get(k) for k in (
                "distribute", "data_service", "tpu", "startup_timeout", "dataset")})):
        raise ValueError(
            f"cannot resume the interrupted run in {config.output_dir} with --distribute "
            f"{config.distribute}: it was started with --distribute {saved['distribute']!r} "
            "(Keras fit, another backup format); resume it with its options, or pass "
            "--restart to move it aside and start over")


def _make_strategy(config, log):
    from pipelines.distribute import make_strategy

    start = time.perf_counter()
    strategy = make_strategy(config.distribute, tpu=config.tpu,
                             startup_timeout=config.startup_timeout)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch-size {config.batch_size} (the global batch) is not "
                         f"divisible by the {replicas} replicas in sync: use a multiple "
                         f"of {replicas}")
    log(f"distribution: {config.distribute} ({replicas} replica(s), ready in "
        f"{time.perf_counter() - start:.1f} s)")
    return strategy


@dataclasses.dataclass
class _InputData:
    """What the loop trains on: `train` (dataset or input function), steps, and `Datasets`."""

    train: object
    steps_per_epoch: int
    datasets: object  # pipelines.data.Datasets: validation, test and info


def _default_augmentation(config, info):
    from pipelines.data.tfds_source import NO_FLIP_DATASETS

    if config.augmentation is not None:
        return config.augmentation
    flips = info.image_shape[2] == 3 and info.name not in NO_FLIP_DATASETS
    return "crop_flip" if flips else "crop"


def _records_input(config, path, strategy, workers):
    """TFRecords: training files sharded per worker (`distribute_datasets_from_function`)."""
    from pipelines import records

    kwargs = {"image_size": config.image_size, "seed": config.seed,
              "deterministic": config.deterministic}
    datasets = records.tfrecord_datasets(path, batch_size=config.batch_size, **kwargs)
    augmentation = _default_augmentation(config, datasets.info)
    replicas = strategy.num_replicas_in_sync
    per_replica = config.batch_size // replicas
    metadata = records.read_metadata(path)
    # Synchronous workers run the same number of steps: the smallest shard's.
    steps = records.min_steps_per_epoch(metadata, "train", per_replica * (replicas // workers),
                                        workers)
    if steps < 1:
        raise ValueError(f"--dataset {config.dataset}: a worker's share of the training files "
                         f"holds fewer than one global batch of {config.batch_size} images")

    def train_fn(context):
        train = records.tfrecord_datasets(
            path, batch_size=context.get_per_replica_batch_size(config.batch_size),
            input_context=context, drop_remainder=True, augmentation=augmentation,
            **kwargs).train
        return _through_service(train, config)

    return _InputData(train_fn, steps, datasets)


def _through_service(train, config):
    if not config.data_service:
        return train
    from pipelines.data_service import distribute_through_service

    return distribute_through_service(train, config.data_service)


def _load_input(config, strategy, cluster):
    """The run's data: from prepared records, or `load_datasets` (global batches)."""
    from pipelines.data import load_datasets

    workers = cluster.num_workers if cluster else 1
    path = records_path(config.dataset)
    if path is not None:
        return _records_input(config, path, strategy, workers)
    if workers > 1:
        # Every worker runs the whole pipeline and keeps its slice of each global
        # batch: the batches must come in the same order on all of them.
        config = dataclasses.replace(config, deterministic=True)
    # The training job's `load_datasets` call (whole training batches).
    datasets = load_datasets(config.dataset, batch_size=config.batch_size,
                             image_size=config.image_size, data_dir=config.data_dir,
                             offline=config.offline, augmentation=config.augmentation,
                             seed=config.seed, deterministic=config.deterministic,
                             drop_remainder=True,
                             # --on-bad-image, where the job has it (main since trainint)
                             on_bad_image=getattr(config, "on_bad_image", "error"))
    steps = int(datasets.train.cardinality().numpy())
    return _InputData(_through_service(datasets.train, config), steps, datasets)


def fitting_on_train(requested, resolved):
    """`resolved` fitting on the training split: the custom loop validates every epoch.

    A preset's `fit_on="train+validation"` falls back to "train" here;
    `--fit-on train+validation` given by the user is refused.

    Args:
        requested: the config as given (`fit_on` None unless the user set it).
        resolved: the same config resolved.

    Raises:
        ValueError: `--fit-on train+validation` was requested.
    """
    if requested.fit_on == "train+validation":
        raise ValueError("--fit-on train+validation is not supported with --distribute "
                         "multi_worker/tpu, TFRecords or --data-service (the custom training "
                         "loop validates every epoch); use --fit-on train")
    return dataclasses.replace(resolved, fit_on="train")


def weights_checksum(model):
    """sha256 (16 hex digits) of a model's weights: equal on workers with equal weights.

    Example:
    >>> weights_checksum(model)
    '3f0c9e2a1b7d5c44'
    """
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def _fit(config, data, kwargs, strategy, cluster, log):
    """Builds the recipe-compiled ViT under the strategy and trains it with the loop."""
    import keras

    from pipelines.distributed import PeerLostError, fit_distributed, restart_process

    # As the single-process job (`fit_model`): the same initial weights for a seed,
    # whatever data loading drew from the random state.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():  # variables, optimizer slots and metrics on the strategy's devices
        model = compiled_model(config, kwargs, data.steps_per_epoch)
    log(f"model {model.name}: {model.count_params():,} parameters; custom training loop, "
        f"{data.steps_per_epoch} steps per epoch of {config.batch_size} images")
    start = time.perf_counter()
    try:
        history = fit_distributed(
            model, model.optimizer, model.loss, data.train, data.datasets.validation,
            epochs=config.epochs, run_dir=config.output_dir, strategy=strategy,
            cluster=cluster, steps_per_epoch=data.steps_per_epoch,
            global_batch_size=config.batch_size, log=log)
    except PeerLostError as error:
        restart_process(str(error), log=log)  # returns only when out of restarts
        raise
    log(f"final weights sha256: {weights_checksum(model)}")
    return FitOutcome(model=model, epoch_seconds=history["seconds"][history["start_epoch"]:],
                      steps_per_epoch=data.steps_per_epoch,
                      seconds=time.perf_counter() - start)


#: How long the other workers wait for the chief's evaluation and export.
FINISH_TIMEOUT_S = 6 * 3600


def _wait_for_the_chief(cluster, log):
    """All workers meet once the chief has written its artifacts, then exit together.

    A worker that exits while the chief still evaluates shows up in the chief's
    log as a crashed task (TensorFlow's coordination service stops hearing its
    heartbeats); and a chief that fails after training fails its workers too.

    Raises:
        RuntimeError: the chief died or did not finish within FINISH_TIMEOUT_S.
    """
    if cluster is None or cluster.num_workers == 1:
        return
    import tensorflow as tf

    # The coordination service's barrier (no public API): no collective, no data.
    from tensorflow.python.eager import context

    if not cluster.is_chief:
        log("waiting for the chief's evaluation and export")
    try:
        context.context().wait_at_barrier("keras_vit_train_end", FINISH_TIMEOUT_S * 1000)
    except tf.errors.OpError as error:
        raise RuntimeError("the chief did not finish the run (" + str(error).splitlines()[0]
                           + "); see its log") from None


def _plain_copy(config, kwargs, fitted):
    """The trained model rebuilt outside the strategy (plain variables), for the chief's
    evaluation and export: Keras `predict`/`export` do not run under multi-worker."""
    plain = compiled_model(config, kwargs, fitted.steps_per_epoch)
    plain.set_weights(fitted.model.get_weights())
    return dataclasses.replace(fitted, model=plain)


def train_distributed(config, log=print):
    """The training job with `fit_distributed`; returns the chief's metrics (others: {}).

    Args:
        config: a resolved, checked `TrainConfig` (`uses_custom_loop(config)`).
        log: callable taking one message per line.

    Returns:
        dict of the run's metrics (also in `<output_dir>/metrics.json`) on the
        chief; an empty dict on the other workers.

    Raises:
        ValueError: bad TF_CONFIG, unreachable peer, indivisible batch, refused
            run folder, bad options: one line, nothing written.

    Example:
    >>> metrics = train_distributed(TrainConfig(distribute="multi_worker").resolved())
    """
    from pipelines.distributed.cluster import read_tf_config

    check_distributed_options(config)
    cluster = read_tf_config() if config.distribute == "multi_worker" else None
    chief = cluster is None or cluster.is_chief
    plan = None
    if chief:  # only the chief has a run folder; the others write to temporary folders
        check_outputs(config)
        plan = plan_run_dir(config)
        _check_resumable(config, plan)
    job_start = time.perf_counter()
    strategy = _make_strategy(config, log)  # before any TensorFlow op
    import keras

    from pipelines.precision import choose_precision
    from pipelines.training.job import Phases

    phases = Phases()
    keras.utils.set_random_seed(config.seed)
    data = phases.timed("data", _load_input, config, strategy, cluster)
    if config.data_service:
        log(f"training input: decoded, augmented and batched by the tf.data service at "
            f"{config.data_service}")
    info = data.datasets.info
    kwargs = model_kwargs(config, info)
    log(f"dataset {info.name}: {info.num_train} train / {info.num_validation} validation / "
        f"{info.num_test} test images of shape {info.image_shape}, {info.num_classes} classes")
    resumed = prepare_run_dir(config, plan, log) if chief else False
    uses_xla = False  # the distributed loop runs its steps as plain graphs
    policy, reason = choose_precision(config.precision, xla=uses_xla)
    keras.config.set_dtype_policy(policy)
    log(f"precision: {policy} ({reason})")
    try:
        fitted = phases.timed("fit", _fit, config, data, kwargs, strategy, cluster, log)
        if not chief:
            _wait_for_the_chief(cluster, log)
            return {}
        metrics = {"dataset": info.name, "precision": policy, "precision_reason": reason,
                   "onednn": onednn_enabled(),
                   "xla": uses_xla, "epochs": config.epochs, "resumed": resumed,
                   "init": getattr(config, "init", None), "distribute": config.distribute,
                   "replicas": strategy.num_replicas_in_sync,
                   "workers": cluster.num_workers if cluster else 1,
                   "weights_sha256": weights_checksum(fitted.model)}
        metrics = _finish_on_chief(config, data.datasets, _plain_copy(config, kwargs, fitted),
                                   metrics, phases, job_start, log)
        _wait_for_the_chief(cluster, log)
        return metrics
    finally:
        keras.config.set_dtype_policy("float32")


def _finish_on_chief(config, datasets, fitted, metrics, phases, job_start, log):
    """Evaluation, plots, best.keras, export (the training job's own) and metrics.json."""
    from pipelines.reporting import write_json
    from pipelines.training import evaluation
    from pipelines.training.job import _finish

    if config.baseline and records_path(config.dataset):
        log("SVC baseline skipped: it reads the source, and this run reads TFRecords")
        config = dataclasses.replace(config, baseline=False)
    _finish(config, datasets, fitted, metrics, phases, log)
    metrics["wall_seconds"] = time.perf_counter() - job_start
    write_json(os.path.join(config.output_dir, METRICS), metrics)
    evaluation.log_summary(metrics, config.output_dir, log)
    return metrics
