"""`tune(config)`: the whole tuning job, from data to leaderboard and export.

data (`pipelines.data`, the sources of `keras-vit train`) -> precision choice
-> `keras_vit.tuning.ViTHyperModel` with the `--space` overrides -> a
keras-tuner tuner (`pipelines.tuning.tuners`) -> leaderboard
(`pipelines.tuning.leaderboard`) -> best model (as trained in its trial, or
retrained) -> TF Serving export.

Example:
>>> summary = tune(TuneConfig(max_trials=4, epochs=3, space=["depth=2,4"]))
>>> summary["best"]["settings"]["depth"]
"""

import dataclasses
import os
import time

from pipelines.onednn import compute_line
from pipelines.tuning import leaderboard as board
from pipelines.tuning.config import READ_BATCH, check_config
from pipelines.tuning.space_input import (
    SPACE_FILE,
    check_space_unchanged,
    load_space,
    parse_objective,
)
from pipelines.tuning.tuners import (
    distributed_role,
    interrupted_trials,
    make_tuner,
    trial_worker,
)


@dataclasses.dataclass
class TuneData:
    """Unbatched train / validation examples, the batched test split, info, train count."""

    train: object
    validation: object
    test: object
    info: object
    num_train: int


@dataclasses.dataclass
class SearchContext:
    """Everything the phases of one tuning run share (instead of a dozen parameters)."""

    config: object
    role: str
    hypermodel: object
    data: TuneData
    policy: str
    log: object
    start: float

    @property
    def project_dir(self):
        return os.path.join(self.config.output_dir, self.config.project_name)


def load_tune_data(config):
    """The job's data: trials re-batch the unbatched examples with their own batch size."""
    import tensorflow as tf

    from pipelines.data import load_datasets

    data = load_datasets(config.dataset, batch_size=READ_BATCH, image_size=config.image_size,
                         data_dir=config.data_dir, offline=config.offline,
                         augmentation=config.augmentation, seed=config.seed,
                         deterministic=config.deterministic, on_bad_image=config.on_bad_image)
    train, validation = data.train.unbatch(), data.validation.unbatch()
    num_train = data.info.num_train
    # The training split is reshuffled every epoch, so a take() of it is a fresh
    # sample each epoch; validation is never shuffled, so its subset is fixed.
    if config.train_examples:
        train = train.take(config.train_examples)
        num_train = min(num_train, config.train_examples)
    num_validation = data.info.num_validation
    if config.validation_examples:
        validation = validation.take(config.validation_examples)
        num_validation = min(num_validation, config.validation_examples)
    # unbatch() and take() lose the datasets' sizes. Keras then meets the end of an
    # epoch as an exhausted iterator, and on TensorFlow its optimizer counts one
    # step more per epoch than it trains (6 batches counted 9 over 3 epochs), so
    # the learning-rate schedule ran out before the last epoch. Sized, it does not.
    train = train.apply(tf.data.experimental.assert_cardinality(num_train))
    validation = validation.apply(tf.data.experimental.assert_cardinality(num_validation))
    return TuneData(train, validation, data.test, data.info, num_train)


def tune(config, log=print, callbacks=None):
    """Runs the whole tuning job; returns the summary written to `summary.json`.

    Args:
        config: a `TuneConfig`.
        log: callable taking one message per line.
        callbacks: extra Keras callbacks for every trial (deep-copied per trial).

    Returns:
        dict: role, best trial, its settings and score, test accuracy, export
        path, leaderboard paths. A distributed worker returns only its role and
        the trials it ran.

    Example:
    >>> summary = tune(TuneConfig(max_trials=4, epochs=3, space=["depth=2,4"]))
    >>> summary["best"]["settings"]["depth"]
    """
    config = config.resolved()
    check_config(config)
    objective = parse_objective(config.objective)
    space = load_space(config.space_file, config.space)

    import keras

    from keras_vit.tuning import ViTHyperModel
    from pipelines.precision import choose_precision

    start = time.perf_counter()
    # Seeded before the input pipeline is built: its shuffles take their seeds
    # from TensorFlow's global seed, so a second search in one process repeats.
    keras.utils.set_random_seed(config.seed)
    data = load_tune_data(config)
    info = data.info
    hypermodel = ViTHyperModel(info.image_shape, info.num_classes, space, epochs=config.epochs,
                               num_train_examples=data.num_train, jit_compile=config.xla,
                               dtype_policy="float32")
    num_validation = min(info.num_validation, config.validation_examples or info.num_validation)
    log(f"dataset {info.name}: {data.num_train} train / {num_validation} validation "
        f"examples of shape {info.image_shape}, {info.num_classes} classes")

    previous_policy = keras.config.dtype_policy()
    try:
        policy, reason = choose_precision(config.precision, xla=config.xla)
        # The hypermodel applies the policy to every trial itself: keras-tuner
        # clears the Keras session, global policy included, before each one.
        hypermodel.dtype_policy = policy
        log(compute_line(policy, reason, config.xla))
        context = SearchContext(config=config, role=distributed_role(), hypermodel=hypermodel,
                                data=data, policy=policy, log=log, start=start)
        tuner = _start_tuner(context, objective)
        _search(context, tuner, callbacks)
        if context.role == "worker":
            return _worker_summary(context, tuner)
        return _finish(context, tuner)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _start_tuner(context, objective):
    """The tuner, resuming the search in the project folder unless `--overwrite`."""
    config, role, log = context.config, context.role, context.log
    project_dir = context.project_dir
    overwrite = config.overwrite and role != "worker"  # a worker must never wipe the search
    if config.overwrite and role == "worker":
        log("--overwrite ignored on a worker: only the chief (or a local run) starts over")
    # keras-tuner reloads a search only when this tuner's own state file exists
    # (written after its first finished trial; by a chief when it starts serving).
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    resuming = os.path.exists(os.path.join(project_dir, f"{tuner_id}.json")) and not overwrite
    record = {"space": context.hypermodel.space, "tuner": config.tuner,
              "objective": config.objective, "dataset": context.data.info.name,
              "image_shape": list(context.data.info.image_shape)}
    if role != "worker":
        # Before the tuner: keras-tuner reloads the project's oracle in its
        # constructor (another tuner's state fails to load there) and, with
        # --overwrite, deletes the project folder.
        check_space_unchanged(project_dir, record, overwrite)
    tuner = make_tuner(config.tuner, context.hypermodel, objective=objective,
                       max_trials=config.max_trials, epochs=config.epochs,
                       directory=config.output_dir, project_name=config.project_name,
                       overwrite=overwrite, seed=config.seed,
                       hyperband_factor=config.hyperband_factor)
    if role != "worker":
        from pipelines.reporting import write_json

        os.makedirs(project_dir, exist_ok=True)  # --overwrite: keras-tuner deleted it
        write_json(os.path.join(project_dir, SPACE_FILE), record)
        if resuming:
            finished = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
            log(f"resuming the search in {project_dir}: {finished} finished trial(s) kept, "
                f"{len(interrupted_trials(tuner.oracle))} interrupted trial(s) to run again")
    address = (f"{os.environ.get('KERASTUNER_ORACLE_IP')}:"
               f"{os.environ.get('KERASTUNER_ORACLE_PORT')}")
    if role == "chief":
        log(f"distributed tuning: chief serving the oracle on {address}")
    elif role == "worker":
        log(f"distributed tuning: worker {tuner.tuner_id} of the oracle at {address}")
    return tuner


def _search(context, tuner, callbacks):
    import keras

    trial_callbacks = [keras.callbacks.TerminateOnNaN()] + list(callbacks or [])
    tuner.search(context.data.train, validation_data=context.data.validation,
                 epochs=context.config.epochs, callbacks=trial_callbacks,
                 verbose=context.config.verbose)
    if context.role == "chief":
        # The oracle saves itself inside `end_trial` before it drops the trial from
        # its ongoing ones; saving again keeps a later resume from re-running the
        # last finished trial (a local tuner does this in `on_trial_end`).
        tuner.save()


def _worker_summary(context, tuner):
    project_dir = context.project_dir
    mine = sorted(name[len("trial_"):] for name in os.listdir(project_dir)
                  if name.startswith("trial_")
                  and trial_worker(project_dir, name[len("trial_"):]) == tuner.tuner_id)
    context.log(f"worker {tuner.tuner_id} done: ran trials {mine}; the chief writes the results")
    return {"role": context.role, "tuner_id": tuner.tuner_id, "trials": mine}


def _write_leaderboard(context, tuner):
    """Prints and writes the leaderboard; returns its rows and file paths."""
    hypermodel, project_dir = context.hypermodel, context.project_dir
    rows = board.leaderboard_rows(tuner.oracle, hypermodel, project_dir)
    keys = board.searched_keys(hypermodel)
    objective_name = tuner.oracle.objective.name
    context.log("")
    context.log(board.format_leaderboard(rows, keys, objective_name))
    csv_path, json_path = board.write_leaderboard(rows, project_dir)
    png_path = board.plot_leaderboard(rows, keys, objective_name,
                                      os.path.join(project_dir, "leaderboard.png"))
    if not rows or rows[0]["rank"] is None:
        raise RuntimeError(f"no trial of the search in {project_dir} finished; see the "
                           "trial.json files there for the errors")
    return rows, {"csv": csv_path, "json": json_path, "png": png_path}


def _finish(context, tuner):
    """Leaderboard, best model, test score, export and `summary.json`."""
    from pipelines.reporting import write_json

    config, log = context.config, context.log
    rows, paths = _write_leaderboard(context, tuner)
    objective_name = tuner.oracle.objective.name
    best_trial = tuner.oracle.get_best_trials(1)[0]
    summary = {
        "role": context.role, "tuner": config.tuner, "objective": objective_name,
        "precision": context.policy, "trials": len(rows),
        "completed_trials": sum(r["rank"] is not None for r in rows),
        "best": {"trial": best_trial.trial_id, "score": float(best_trial.score),
                 "settings": context.hypermodel.settings(best_trial.hyperparameters.values),
                 "hyperparameters": best_trial.hyperparameters.values},
        "leaderboard": paths, "config": dataclasses.asdict(config),
    }
    if config.export or config.retrain_epochs:
        model = _best_model(context, tuner, best_trial)
        test_loss, test_accuracy = model.evaluate(context.data.test, verbose=0)
        summary.update(test_accuracy=float(test_accuracy), test_loss=float(test_loss),
                       parameters=int(model.count_params()))
        log(f"best model {model.name}: {model.count_params():,} parameters, test accuracy "
            f"{test_accuracy:.4f}")
        if config.export:
            summary["export"] = str(_export(context, model))
    summary["wall_seconds"] = time.perf_counter() - context.start
    write_json(os.path.join(context.project_dir, "summary.json"), summary)
    log(f"best trial {best_trial.trial_id}: {objective_name} {best_trial.score:.4f}")
    log(f"leaderboard    {paths['csv']} (+ .json, .png)")
    if "export" in summary:
        log(f"SavedModel     {summary['export']}")
    return summary


def _best_model(context, tuner, best_trial):
    """The winner as trained in its trial, or retrained with `--retrain-epochs`."""
    config, hypermodel = context.config, context.hypermodel
    if not config.retrain_epochs:
        return tuner.get_best_models(1)[0]
    context.log(f"retraining the best settings for {config.retrain_epochs} epochs")
    hp = best_trial.hyperparameters
    hypermodel.epochs = config.retrain_epochs  # the schedule spans the retraining
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, context.data.train, validation_data=context.data.validation,
                   epochs=config.retrain_epochs, verbose=config.verbose)
    return model


def _export(context, model):
    from pipelines.serving.transaction import export_model

    config = context.config
    warmup = next(iter(context.data.test))[0].numpy()[:4]
    version_dir = export_model(model, config.model_name, config.export_dir,
                               class_names=list(context.data.info.class_names),
                               warmup_images=warmup, verify=config.verify_export,
                               verbose=bool(config.verbose))
    context.log(f"exported for TF Serving: {version_dir}")
    return version_dir
