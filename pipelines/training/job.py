"""`train(config)`: the whole training job, phase by phase, timed.

checks (options, `--init` checkpoint, run folder) -> data
(`pipelines.training.data_loading`; a dataset without a named preset gets its
unset options scaled to the data there, and its run folder is planned then)
-> precision/XLA choice -> ViT (new, or
the `--init` checkpoint's) compiled by the recipe and fitted
(`pipelines.training.fit`) -> test metrics, SVC baseline, plots,
export (`pipelines.training.evaluation`) -> `metrics.json`.

Example:
>>> metrics = train(TrainConfig(epochs=1, export=False))
>>> metrics["test_accuracy"]
"""

import dataclasses
import os
import time

import numpy as np

from pipelines.onednn import compute_line, onednn_enabled
from pipelines.training import evaluation as evaluation_module
from pipelines.training.config import check_config, check_tta_shift, model_kwargs
from pipelines.training.data_loading import describe_data, describe_fit, load_run_data
from pipelines.training.fit import fit_model, trainable_parameters
from pipelines.training.init_checkpoint import (
    open_init_checkpoint,
    with_checkpoint_image_size,
)
from pipelines.training.preflight import check_outputs
from pipelines.training.presets import describe_preset
from pipelines.training.run_folder import METRICS, plan_run_dir, prepare_run_dir


class Phases(dict):
    """Wall seconds per phase (`metrics.json`'s `phase_seconds`)."""

    def timed(self, name, function, *args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self[name] = time.perf_counter() - start


def _checked_start(config):
    """Resolves and checks `config` and plans the run folder; nothing is read or written.

    With `--init`, the checkpoint is opened (headers only) and gives the image
    size when `--image-size` is not set.

    Returns:
        `(resolved config, run folder plan)`; the plan is None while the
        preset waits for the data (`TrainConfig.preset_needs_data`): the
        folder is planned once the data-scaled options are known.
    """
    config = config.resolved()
    check_config(config)
    if config.init:
        config = with_checkpoint_image_size(config)
    check_outputs(config)
    if config.preset_needs_data:
        return config, None
    return config, plan_run_dir(config)  # refuses a finished run or changed options


def _check_model(config, info, kwargs):
    """Fails on a bad architecture, or a checkpoint unfit for the data, before anything is written."""
    check_tta_shift(config.tta_shift, info.image_shape)
    if config.init:
        open_init_checkpoint(config, info.image_shape)  # channels, patch grid
    else:
        from keras_vit.models import vision_transformer

        vision_transformer(**kwargs)


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
    from pipelines.training import distributed_job

    resolved = config.resolved()
    if distributed_job.uses_custom_loop(resolved):  # multi-worker, TPU, TFRecords, tf.data service
        resolved = distributed_job.fitting_on_train(config, resolved)
        check_config(resolved)
        if resolved.init:
            resolved = with_checkpoint_image_size(resolved)
        return distributed_job.train_distributed(resolved, log)
    requested = config
    config, plan = _checked_start(requested)
    import keras

    from pipelines.precision import choose_precision

    job_start = time.perf_counter()
    phases = Phases()
    # Before any tf.data op: TensorFlow derives op seeds from the global seed.
    keras.utils.set_random_seed(config.seed)
    data, data_warnings, config = phases.timed("data", load_run_data, config, requested)
    info = data.info
    if plan is None:  # the data-scaled options are known now; nothing is written yet
        plan = plan_run_dir(config)
    kwargs = model_kwargs(config, info)
    _check_model(config, info, kwargs)
    for line in describe_data(info, data_warnings):
        log(line)
    if config.preset_needs_data:
        log(describe_preset(config, info))
    fit_line = describe_fit(config, info)
    if fit_line:
        log(fit_line)
    resumed = prepare_run_dir(config, plan, log)

    policy, reason = choose_precision(config.precision, xla=config.xla)
    keras.config.set_dtype_policy(policy)
    log(compute_line(policy, reason, config.xla))
    try:
        fitted = phases.timed("fit", fit_model, config, data, kwargs, log)
        metrics = {"dataset": info.name, "precision": policy, "precision_reason": reason,
                   "onednn": onednn_enabled(),
                   "xla": config.xla, "epochs": config.epochs, "fit_on": config.fit_on,
                   "resumed": resumed,
                   "init": config.init, **_data_metrics(info)}
        _finish(config, data, fitted, metrics, phases, log)
        metrics["wall_seconds"] = time.perf_counter() - job_start
        from pipelines.reporting import write_json
        write_json(os.path.join(config.output_dir, METRICS), metrics)
        evaluation_module.log_summary(metrics, config.output_dir, log)
        return metrics
    finally:
        keras.config.set_dtype_policy("float32")


def _data_metrics(info):
    """What `metrics.json` records about the data: split sizes and origins, conversions, skips."""
    return {"split_sizes": info.split_sizes, "split_origins": info.split_origins,
            "conversions": info.conversions, "skipped_files": list(info.skipped_files)}


def _finish(config, data, fitted, metrics, phases, log):
    """Evaluation, baseline, artifacts and export, each timed; fills `metrics`."""
    info = data.info
    scores = phases.timed("evaluate", evaluation_module.evaluate_best, config, fitted.model,
                          data.test)
    steady = fitted.epoch_seconds[1:] or fitted.epoch_seconds
    if not np.isfinite(scores.metrics["test_loss"]):
        from pipelines.cli_args import TrainingDiverged

        raise TrainingDiverged(
            f"training diverged: the test loss is {scores.metrics['test_loss']} (history in "
            f"{config.output_dir}); nothing exported. Lower --learning-rate (now "
            f"{config.learning_rate}) or --clipnorm (now {config.clipnorm}) and run again "
            "with --overwrite")
    metrics.update(scores.metrics)
    metrics.update({
        "model": scores.best.name, "parameters": int(scores.best.count_params()),
        "trainable_parameters": trainable_parameters(scores.best),
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
