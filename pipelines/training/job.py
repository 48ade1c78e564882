"""`train(config)`: the whole training job, phase by phase, timed.

data (`pipelines.data`) -> precision/XLA choice -> ViT compiled by the recipe
and fitted (`pipelines.training.fit`) -> test metrics, SVC baseline, plots,
export (`pipelines.training.evaluation`) -> `metrics.json`.

Example:
>>> metrics = train(TrainConfig(epochs=1, export=False))
>>> metrics["test_accuracy"]
"""

import dataclasses
import os
import time

import numpy as np

from pipelines.training import evaluation as evaluation_module
from pipelines.training.config import check_config, model_kwargs
from pipelines.training.fit import fit_model
from pipelines.training.preflight import check_outputs
from pipelines.training.run_folder import METRICS, plan_run_dir, prepare_run_dir


class _Phases(dict):
    """Wall seconds per phase (`metrics.json`'s `phase_seconds`)."""

    def timed(self, name, function, *args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self[name] = time.perf_counter() - start


def _load_data(config):
    from pipelines.data import load_datasets

    return load_datasets(config.dataset, batch_size=config.batch_size,
                         image_size=config.image_size, data_dir=config.data_dir,
                         offline=config.offline, augmentation=config.augmentation,
                         seed=config.seed, deterministic=config.deterministic,
                         drop_remainder=True)


def train(config, log=print):
    """Runs the whole training job; returns the metrics written to `metrics.json`.

    Args:
        config: a `TrainConfig` (unset fields take the dataset preset).
        log: callable taking one message per line.

    Returns:
        dict of the run's metrics (also in `<output_dir>/metrics.json`).

    Example:
    >>> metrics = train(TrainConfig(epochs=1, export=False))
    >>> metrics["test_accuracy"]
    """
    config = config.resolved()
    check_config(config)
    from pipelines.training import distributed_job

    if distributed_job.uses_custom_loop(config):  # multi-worker, TPU, TFRecords, tf.data service
        return distributed_job.train_distributed(config, log)
    check_outputs(config)
    plan = plan_run_dir(config)  # refuses a finished run or changed options, before any data
    import keras

    from keras_vit.models import vision_transformer
    from pipelines.precision import choose_precision

    job_start = time.perf_counter()
    phases = _Phases()
    # Before any tf.data op: TensorFlow derives op seeds from the global seed.
    keras.utils.set_random_seed(config.seed)
    data = phases.timed("data", _load_data, config)
    info = data.info
    kwargs = model_kwargs(config, info)
    vision_transformer(**kwargs)  # fail on a bad architecture before anything is written
    log(f"dataset {info.name}: {info.num_train} train / {info.num_validation} validation / "
        f"{info.num_test} test images of shape {info.image_shape}, {info.num_classes} classes")
    resumed = prepare_run_dir(config, plan, log)

    policy, reason = choose_precision(config.precision)
    keras.config.set_dtype_policy(policy)
    log(f"precision: {policy} ({reason}); XLA: {'on' if config.xla else 'off'}")
    try:
        fitted = phases.timed("fit", fit_model, config, data, kwargs, log)
        metrics = {"dataset": info.name, "precision": policy, "precision_reason": reason,
                   "xla": config.xla, "epochs": config.epochs, "resumed": resumed}
        _finish(config, data, fitted, metrics, phases, log)
        metrics["wall_seconds"] = time.perf_counter() - job_start
        from pipelines.reporting import write_json
        write_json(os.path.join(config.output_dir, METRICS), metrics)
        evaluation_module.log_summary(metrics, config.output_dir, log)
        return metrics
    finally:
        keras.config.set_dtype_policy("float32")


def _finish(config, data, fitted, metrics, phases, log):
    """Evaluation, baseline, artifacts and export, each timed; fills `metrics`."""
    info = data.info
    scores = phases.timed("evaluate", evaluation_module.evaluate_best, config, fitted.model,
                          data.test)
    steady = fitted.epoch_seconds[1:] or fitted.epoch_seconds
    metrics.update(scores.metrics)
    metrics.update({
        "model": scores.best.name, "parameters": int(scores.best.count_params()),
        "epochs_this_run": len(fitted.epoch_seconds),
        "train_images_per_second": (float(fitted.steps_per_epoch * config.batch_size
                                          / np.median(steady)) if steady else None),
        "train_wall_seconds": fitted.seconds,
        "epoch_seconds": [round(t, 3) for t in fitted.epoch_seconds],
        "config": dataclasses.asdict(config),
    })
    baseline = phases.timed("baseline", evaluation_module.svc_accuracy, config, info,
                            (scores.x_test, scores.y_test))
    if baseline is not None:
        metrics["svc_test_accuracy"] = baseline
    phases.timed("artifacts", evaluation_module.write_artifacts, config.output_dir, metrics,
                 scores, info)
    if config.export:
        metrics["export"] = str(phases.timed("export", evaluation_module.export_final, config,
                                             scores, info, log))
    metrics["phase_seconds"] = dict(phases)
