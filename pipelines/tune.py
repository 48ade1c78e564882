"""`keras-vit tune`: search ViT hyperparameters with keras-tuner and export the winner.

The job: data (`pipelines.data`, the sources of `keras-vit train`) -> precision
choice (`pipelines.precision`) -> `keras_vit.tuning.ViTHyperModel` with the
search space narrowed or widened by `--space`/`--space-file` -> keras-tuner
(random, hyperband, bayesian or grid) -> leaderboard (printed, CSV, JSON, PNG)
-> best model (as trained in its trial, or retrained) -> TF Serving export.

Run folder `<output-dir>/<project-name>/` (default `runs/tune_<dataset>/search/`):
keras-tuner's `oracle.json`, `tuner*.json` and `trial_*/` (each with a
`worker.json` naming the tuner that ran it), plus `search_space.json`,
`leaderboard.csv`, `leaderboard.json`, `leaderboard.png` and `summary.json`.

Starting the job again with the same folder resumes the search: finished trials
are kept and the interrupted one is run again (keras-tuner reloads with
`overwrite=False`); `--overwrite` starts over.

Distributed tuning uses keras-tuner's chief/worker mode: set
`KERASTUNER_TUNER_ID` (`chief`, `tuner0`, `tuner1`, ...),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` in every process and run the
same command; the chief serves the oracle, the workers run the trials, and the
chief writes the leaderboard and exports once the search is over (see
docs/tuning.md).

Example:
    keras-vit tune --max-trials 20 --epochs 30
    keras-vit tune --tuner hyperband --epochs 27 --space depth=2,4,6 \\
        --space learning_rate=1e-4:3e-3:log --space pooling=gap
    python -m pipelines.tune --help
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import socket
import sys
import time

from pipelines.cli_args import image_size, safe_name

DEFAULT_DATASET = "digits"
TUNERS = ("random", "hyperband", "bayesian", "grid")
DEFAULT_PROJECT = "search"
# Batch size the data is read with; trials re-batch with their own batch size.
_READ_BATCH = 256


@dataclasses.dataclass
class TuneConfig:
    """Every option of a tuning run; attributes mirror the flags of `build_parser`."""

    dataset: str = DEFAULT_DATASET
    data_dir: str = None
    offline: bool = False
    image_size: tuple = None
    augmentation: str = None
    deterministic: bool = False
    train_examples: int = None
    validation_examples: int = None
    tuner: str = "random"
    max_trials: int = 10
    epochs: int = 10
    hyperband_factor: int = 3
    objective: str = "val_accuracy"
    space: list = dataclasses.field(default_factory=list)
    space_file: str = None
    precision: str = "auto"
    xla: bool = True
    seed: int = 0
    output_dir: str = None
    project_name: str = DEFAULT_PROJECT
    overwrite: bool = False
    retrain_epochs: int = 0
    export: bool = True
    export_dir: str = "savedmodels"
    model_name: str = None
    verify_export: bool = True
    verbose: int = 1

    def resolved(self):
        """A copy with the dataset-dependent defaults filled in."""
        values = dataclasses.asdict(self)
        name = safe_name(self.dataset)
        values["output_dir"] = values["output_dir"] or os.path.join("runs", f"tune_{name}")
        values["model_name"] = values["model_name"] or f"vit_{name}_tuned"
        return TuneConfig(**values)






# ---------------------------------------------------------------- search-space input


def _scalar(text):
    """`"4"` -> 4, `"1e-3"` -> 0.001, `"gap"` -> "gap"."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_space_arg(text):
    """One `--space` value -> `(key, spec)` in `ViTHyperModel`'s search-space forms.

    `KEY=A,B,C` is a choice, `KEY=V` a fixed value, `KEY=LO:HI` a linear range,
    and `KEY=LO:HI:log` / `KEY=LO:HI:STEP` / `KEY=LO:HI:STEP:log` add sampling or
    a step.

    Args:
        text: str, e.g. `"depth=2,4"` or `"learning_rate=1e-4:3e-3:log"`.

    Returns:
        `(key, spec)`.

    Example:
    >>> parse_space_arg("learning_rate=1e-4:3e-3:log")
    ('learning_rate', {'min': 0.0001, 'max': 0.003, 'sampling': 'log'})
    """
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(f"--space {text!r}: expected KEY=VALUES, e.g. depth=2,4 or "
                         "learning_rate=1e-4:3e-3:log")
    if ":" in value:
        parts = value.split(":")
        if len(parts) > 4 or not all(parts):
            raise ValueError(f"--space {text!r}: a range is LO:HI[:STEP][:SAMPLING]")
        spec = {"min": _scalar(parts[0]), "max": _scalar(parts[1])}
        for extra in parts[2:]:
            extra_value = _scalar(extra)
            spec["sampling" if isinstance(extra_value, str) else "step"] = extra_value
        return key, spec
    if "," in value:
        return key, [_scalar(v) for v in value.split(",") if v.strip()]
    return key, _scalar(value)


def load_space(space_file=None, space_args=()):
    """Search-space overrides from a JSON file, then `--space` values on top.

    The file holds one JSON object in the forms of `ViTHyperModel`:
    `{"depth": [2, 4], "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
    "dropout": 0.0}`.

    Args:
        space_file: path or None.
        space_args: iterable of `--space` strings.

    Returns:
        dict key -> spec.

    Example:
    >>> load_space(None, ["depth=2,4", "pooling=gap"])
    {'depth': [2, 4], 'pooling': 'gap'}
    """
    space = {}
    if space_file:
        try:
            with open(space_file) as handle:
                space = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--space-file {space_file!r}: {error}") from error
        if not isinstance(space, dict):
            raise ValueError(f"--space-file {space_file!r}: expected a JSON object of "
                             "key -> values")
    for text in space_args or ():
        key, spec = parse_space_arg(text)
        space[key] = spec
    return space


def parse_objective(text):
    """`"val_accuracy"` or `"val_loss:min"` -> a `keras_tuner.Objective`.

    Without a direction, names with `loss` or `error` are minimised, others
    maximised.
    """
    import keras_tuner as kt

    name, _, direction = str(text).partition(":")
    direction = direction or ("min" if "loss" in name or "error" in name else "max")
    if not name or direction not in ("min", "max"):
        raise ValueError(f"--objective {text!r}: expected NAME or NAME:min / NAME:max")
    return kt.Objective(name, direction=direction)


# ----------------------------------------------------------------------- the tuners


def distributed_role():
    """`"chief"`, `"worker"` or `"local"`, from keras-tuner's environment variables.

    keras-tuner runs distributed when `KERASTUNER_ORACLE_IP` is set; the process
    whose `KERASTUNER_TUNER_ID` contains "chief" serves the oracle.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


WORKER_FILE = "worker.json"


def _recording(base):
    """`base` tuner class that notes in each trial folder which tuner ran it.

    keras-tuner keeps no record of the worker behind a trial; `worker.json`
    makes the leaderboard (and a distributed run's check) show it.
    """

    class Recording(base):
        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            record = {"tuner_id": self.tuner_id, "host": socket.gethostname(),
                      "pid": os.getpid(), "started": time.time()}
            with open(os.path.join(self.get_trial_dir(trial.trial_id), WORKER_FILE), "w") as f:
                json.dump(record, f)

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording


def make_tuner(kind, hypermodel, *, objective, max_trials, epochs, directory, project_name,
               overwrite=False, seed=0, hyperband_factor=3):
    """A keras-tuner tuner of `kind` over `hypermodel`, recording its workers.

    Args:
        kind: one of `TUNERS`.
        hypermodel: a `keras_tuner.HyperModel`.
        objective: str or `keras_tuner.Objective`.
        max_trials: int. Trials at most (Hyperband: a cap on its own schedule).
        epochs: int. Hyperband's `max_epochs` (others get epochs from `search`).
        directory, project_name: where the search lives.
        overwrite: bool. Start over instead of resuming.
        seed: int.
        hyperband_factor: int >= 2.

    Example:
    >>> tuner = make_tuner("bayesian", hypermodel, objective="val_accuracy", max_trials=20,
    ...                    epochs=10, directory="runs/tune", project_name="search")
    """
    import keras_tuner as kt

    common = dict(objective=objective, seed=seed, directory=directory,
                  project_name=project_name, overwrite=overwrite)
    if kind == "random":
        return _recording(kt.RandomSearch)(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return _recording(kt.BayesianOptimization)(hypermodel, max_trials=max_trials, **common)
    if kind == "grid":
        return _recording(kt.GridSearch)(hypermodel, max_trials=max_trials, **common)
    if kind == "hyperband":
        tuner = _recording(kt.Hyperband)(hypermodel, max_epochs=epochs, factor=hyperband_factor,
                                         hyperband_iterations=1, **common)
        # Hyperband sizes itself from max_epochs; the oracle's generic trial cap
        # bounds it too (not part of the saved state, so set on every start).
        tuner.oracle.max_trials = max_trials or None
        return tuner
    raise ValueError(f"--tuner must be one of {TUNERS}; received {kind!r}")


# ------------------------------------------------------------------------- results


def _trial_worker(project_dir, trial_id):
    path = os.path.join(project_dir, f"trial_{trial_id}", WORKER_FILE)
    try:
        with open(path) as handle:
            return json.load(handle).get("tuner_id")
    except (OSError, ValueError):
        return None


def leaderboard_rows(oracle, hypermodel, project_dir):
    """One dict per trial, best first: rank, trial, status, score, tuner, settings.

    Completed trials come first, sorted by the objective; failed or unfinished
    ones follow with no rank. Settings are `hypermodel.settings` of the trial
    (width and heads decoded), plus Hyperband's epochs when present.

    Args:
        oracle: the tuner's oracle (`tuner.oracle`).
        hypermodel: the `ViTHyperModel`.
        project_dir: the keras-tuner project folder.

    Returns:
        list of dicts.
    """
    trials = list(oracle.trials.values())
    done = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    others = [t for t in trials if t not in done]
    done.sort(key=lambda t: t.score, reverse=oracle.objective.direction == "max")
    rows = []
    for rank, trial in enumerate(done + others, start=1):
        values = trial.hyperparameters.values
        row = {"rank": rank if trial in done else None, "trial": trial.trial_id,
               "status": trial.status,
               "score": float(trial.score) if trial.score is not None else None,
               "best_epoch": int(trial.best_step) + 1 if trial in done else None,
               "tuner_id": _trial_worker(project_dir, trial.trial_id)}
        row.update(hypermodel.settings(values))
        if "tuner/epochs" in values:
            row["epochs"] = values["tuner/epochs"]
            row["initial_epoch"] = values.get("tuner/initial_epoch", 0)
        rows.append(row)
    return rows


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def searched_keys(hypermodel):
    """Settings the search varies (width and heads separately), in search order."""
    from keras_vit.tuning import split_width_heads

    pairs = [split_width_heads(p) for p in hypermodel.pairs]
    keys = []
    for key, param in hypermodel.space.items():
        if key in ("hidden_dim", "num_heads"):
            # Searched through the width x heads pairs, not on their own.
            index = 0 if key == "hidden_dim" else 1
            if len({pair[index] for pair in pairs}) > 1:
                keys.append(key)
        elif "value" not in param:
            keys.append(key)
    return keys


def format_leaderboard(rows, keys, objective):
    """The leaderboard as an aligned text table (trial, score, searched settings)."""
    columns = ["rank", "trial", "score", "tuner_id"] + list(keys) + ["status"]
    header = {"score": objective, "tuner_id": "tuner"}
    table = [[header.get(c, c) for c in columns]]
    table += [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                     for r in table)


def write_leaderboard(rows, run_dir):
    """`leaderboard.csv` and `leaderboard.json` in `run_dir`; returns their paths."""
    from pipelines.reporting import write_json

    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    csv_path = os.path.join(run_dir, "leaderboard.csv")
    with open(csv_path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(csv_path + ".tmp", csv_path)
    json_path = os.path.join(run_dir, "leaderboard.json")
    write_json(json_path, rows)
    return csv_path, json_path


def plot_leaderboard(rows, keys, objective, path):
    """PNG of the score of each finished trial against each searched setting.

    Numbers go on a (log, for learning rate and weight decay) axis; categories
    on evenly spaced ticks. Without searched settings: score per trial.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display on training machines.
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["score"] is not None]
    keys = list(keys) or ["trial"]
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows),
                                squeeze=False)
    scores = [r["score"] for r in done]
    for axis, key in zip(axes.flat, keys):
        values = [r.get(key) for r in done]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in values) and key != "trial":
            axis.scatter(values, scores)
            if key in ("learning_rate", "weight_decay") and min(values) > 0:
                axis.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            axis.scatter([labels.index(str(v)) for v in values], scores)
            axis.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
        axis.set_xlabel(key)
        axis.set_ylabel(objective)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.suptitle(f"{objective} against the searched hyperparameters ({len(done)} trials)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------ the job


def _check_config(config):
    if config.tuner not in TUNERS:
        raise ValueError(f"--tuner must be one of {TUNERS}; received {config.tuner!r}")
    for name in ("max_trials", "epochs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; "
                             f"received {value!r}")
    for name in ("train_examples", "validation_examples"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; "
                             f"received {value!r}")
    if config.retrain_epochs < 0:
        raise ValueError(f"--retrain-epochs must be >= 0; received {config.retrain_epochs!r}")
    if config.hyperband_factor < 2:
        raise ValueError(f"--hyperband-factor must be >= 2; received {config.hyperband_factor!r}")
    from pipelines.precision import PRECISIONS
    if config.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}; received {config.precision!r}")
    if config.export:
        from pipelines.export import validate_model_name
        validate_model_name(config.model_name)


def _datasets(config):
    """Unbatched train / validation examples, batched test, info, train example count."""
    from pipelines.data import load_datasets

    data = load_datasets(config.dataset, batch_size=_READ_BATCH, image_size=config.image_size,
                         data_dir=config.data_dir, offline=config.offline,
                         augmentation=config.augmentation, seed=config.seed,
                         deterministic=config.deterministic)
    train, validation = data.train.unbatch(), data.validation.unbatch()
    num_train = data.info.num_train
    # The training split is reshuffled every epoch, so a take() of it is a fresh
    # sample each epoch; validation is never shuffled, so its subset is fixed.
    if config.train_examples:
        train = train.take(config.train_examples)
        num_train = min(num_train, config.train_examples)
    if config.validation_examples:
        validation = validation.take(config.validation_examples)
    return train, validation, data.test, data.info, num_train


def _check_space_unchanged(project_dir, record, overwrite):
    """Refuses to resume a search whose space or tuner differs from this run's."""
    path = os.path.join(project_dir, "search_space.json")
    if os.path.exists(path) and not overwrite:
        with open(path) as handle:
            previous = json.load(handle)
        if previous != record:
            raise ValueError(f"the search in {project_dir} was started with another search "
                             f"space, tuner or objective ({path}); pass --overwrite to start "
                             "over, or another --project-name")
    from pipelines.reporting import write_json
    write_json(path, record)


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
    _check_config(config)
    objective = parse_objective(config.objective)
    space = load_space(config.space_file, config.space)

    import keras

    from keras_vit.tuning import ViTHyperModel
    from pipelines.precision import choose_precision

    start = time.perf_counter()
    role = distributed_role()
    train, validation, test, info, num_train = _datasets(config)
    hypermodel = ViTHyperModel(info.image_shape, info.num_classes, space, epochs=config.epochs,
                               num_train_examples=num_train, jit_compile=config.xla,
                               dtype_policy="float32")
    num_validation = min(info.num_validation, config.validation_examples or info.num_validation)
    log(f"dataset {info.name}: {num_train} train / {num_validation} validation "
        f"examples of shape {info.image_shape}, {info.num_classes} classes")

    previous_policy = keras.config.dtype_policy()
    try:
        keras.utils.set_random_seed(config.seed)
        policy, reason = choose_precision(config.precision)
        # The hypermodel applies the policy to every trial itself: keras-tuner
        # clears the Keras session, global policy included, before each one.
        hypermodel.dtype_policy = policy
        log(f"precision: {policy} ({reason}); XLA: {'on' if config.xla else 'off'}")
        return _search_and_finish(config, role, objective, hypermodel, train, validation, test,
                                  info, policy, callbacks, log, start)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _search_and_finish(config, role, objective, hypermodel, train, validation, test, info,
                       policy, callbacks, log, start):
    import keras

    project_dir = os.path.join(config.output_dir, config.project_name)
    overwrite = config.overwrite and role != "worker"  # a worker must never wipe the search
    if config.overwrite and role == "worker":
        log("--overwrite ignored on a worker: only the chief (or a local run) starts over")
    # keras-tuner reloads a search only when this tuner's own state file exists
    # (written after its first finished trial; by a chief when it starts serving).
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    resuming = os.path.exists(os.path.join(project_dir, f"{tuner_id}.json")) and not overwrite
    tuner = make_tuner(config.tuner, hypermodel, objective=objective,
                       max_trials=config.max_trials, epochs=config.epochs,
                       directory=config.output_dir, project_name=config.project_name,
                       overwrite=overwrite, seed=config.seed,
                       hyperband_factor=config.hyperband_factor)
    if role != "worker":
        _check_space_unchanged(project_dir, {
            "space": hypermodel.space, "tuner": config.tuner, "objective": config.objective,
            "dataset": info.name, "image_shape": list(info.image_shape)}, overwrite)
        if resuming:
            finished = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
            log(f"resuming the search in {project_dir}: {finished} finished trial(s) kept, "
                f"{len(tuner.oracle._retry_queue)} interrupted trial(s) to run again")
    if role == "chief":
        log(f"distributed tuning: chief serving the oracle on "
            f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}")
    elif role == "worker":
        log(f"distributed tuning: worker {tuner.tuner_id} of the oracle at "
            f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}")

    trial_callbacks = [keras.callbacks.TerminateOnNaN()] + list(callbacks or [])
    tuner.search(train, validation_data=validation, epochs=config.epochs,
                 callbacks=trial_callbacks, verbose=config.verbose)
    if role == "chief":
        # The oracle saves itself inside `end_trial` before it drops the trial from
        # its ongoing ones; saving again keeps a later resume from re-running the
        # last finished trial (a local tuner does this in `on_trial_end`).
        tuner.save()

    if role == "worker":
        mine = sorted(name[len("trial_"):] for name in os.listdir(project_dir)
                      if name.startswith("trial_")
                      and _trial_worker(project_dir, name[len("trial_"):]) == tuner.tuner_id)
        log(f"worker {tuner.tuner_id} done: ran trials {mine}; the chief writes the results")
        return {"role": role, "tuner_id": tuner.tuner_id, "trials": mine}
    return _finish(config, role, tuner, hypermodel, project_dir, train, validation, test, info,
                   policy, log, start)


def _finish(config, role, tuner, hypermodel, project_dir, train, validation, test, info,
            policy, log, start):
    from pipelines.reporting import write_json

    rows = leaderboard_rows(tuner.oracle, hypermodel, project_dir)
    keys = searched_keys(hypermodel)
    objective_name = tuner.oracle.objective.name
    log("")
    log(format_leaderboard(rows, keys, objective_name))
    csv_path, json_path = write_leaderboard(rows, project_dir)
    png_path = plot_leaderboard(rows, keys, objective_name,
                                os.path.join(project_dir, "leaderboard.png"))
    if not rows or rows[0]["rank"] is None:
        raise RuntimeError(f"no trial of the search in {project_dir} finished; see the "
                           "trial.json files there for the errors")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    summary = {
        "role": role, "tuner": config.tuner, "objective": objective_name,
        "precision": policy, "trials": len(rows),
        "completed_trials": sum(r["rank"] is not None for r in rows),
        "best": {"trial": best_trial.trial_id, "score": float(best_trial.score),
                 "settings": hypermodel.settings(best_trial.hyperparameters.values),
                 "hyperparameters": best_trial.hyperparameters.values},
        "leaderboard": {"csv": csv_path, "json": json_path, "png": png_path},
        "config": dataclasses.asdict(config),
    }
    if config.export or config.retrain_epochs:
        model = _best_model(config, tuner, hypermodel, best_trial, train, validation, log)
        test_loss, test_accuracy = model.evaluate(test, verbose=0)
        summary.update(test_accuracy=float(test_accuracy), test_loss=float(test_loss),
                       parameters=int(model.count_params()))
        log(f"best model {model.name}: {model.count_params():,} parameters, test accuracy "
            f"{test_accuracy:.4f}")
        if config.export:
            summary["export"] = str(_export(model, config, info, test, log))
    summary["wall_seconds"] = time.perf_counter() - start
    write_json(os.path.join(project_dir, "summary.json"), summary)
    log(f"best trial {best_trial.trial_id}: {objective_name} {best_trial.score:.4f}")
    log(f"leaderboard    {csv_path} (+ .json, .png)")
    if "export" in summary:
        log(f"SavedModel     {summary['export']}")
    return summary


def _best_model(config, tuner, hypermodel, best_trial, train, validation, log):
    """The winner as trained in its trial, or retrained with `--retrain-epochs`."""
    if not config.retrain_epochs:
        return tuner.get_best_models(1)[0]
    log(f"retraining the best settings for {config.retrain_epochs} epochs")
    hp = best_trial.hyperparameters
    hypermodel.epochs = config.retrain_epochs  # the schedule spans the retraining
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, train, validation_data=validation, epochs=config.retrain_epochs,
                   verbose=config.verbose)
    return model


def _export(model, config, info, test, log):
    from pipelines.export import export_model

    warmup = next(iter(test))[0].numpy()[:4]
    version_dir = export_model(model, config.model_name, config.export_dir,
                               class_names=list(info.class_names), warmup_images=warmup,
                               verify=config.verify_export, verbose=bool(config.verbose))
    log(f"exported for TF Serving: {version_dir}")
    return version_dir


# ---------------------------------------------------------------------------- CLI


def build_parser():
    """The `keras-vit tune` argument parser; every option documented in `--help`."""
    from pipelines.data import describe_sources

    parser = argparse.ArgumentParser(
        prog="keras-vit tune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search Vision Transformer hyperparameters with keras-tuner, print and "
                    "save a leaderboard, and export the best model for TF Serving. Running "
                    "again with the same --output-dir/--project-name resumes the search.",
        epilog=describe_sources() + "\n\nsearch space (--space KEY=..., repeatable):\n"
        "  keys: patch_size depth hidden_dim num_heads mlp_ratio pooling dropout drop_path\n"
        "        learning_rate weight_decay label_smoothing batch_size\n"
        "        (and position_embedding attention_dropout, fixed unless given)\n"
        "  KEY=A,B,C choice   KEY=V fixed   KEY=LO:HI[:STEP][:log|linear|reverse_log] range\n"
        "  e.g. --space depth=2,4 --space hidden_dim=32,64 --space learning_rate=1e-4:3e-3:log\n"
        "\ndistributed: set KERASTUNER_TUNER_ID (chief, tuner0, ...), KERASTUNER_ORACLE_IP\n"
        "and KERASTUNER_ORACLE_PORT and run the same command in every process.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET,
                      help="'digits' (embedded, no network), a tfds name, or an image folder "
                           "(default: %(default)s)")
    data.add_argument("--data-dir", help="tensorflow-datasets data directory")
    data.add_argument("--offline", action="store_true",
                      help="never touch the network: the tfds dataset must be prepared already")
    data.add_argument("--image-size", type=image_size, help="resize images to HEIGHT,WIDTH")
    data.add_argument("--augmentation", choices=("none", "flip", "crop", "crop_flip"),
                      help="training augmentation (default: what suits the data)")
    data.add_argument("--deterministic", action="store_true",
                      help="reproducible input order and augmentation")
    data.add_argument("--train-examples", type=int,
                      help="train on this many examples per epoch (a fresh random sample each "
                           "epoch) for quick searches; default: the whole split")
    data.add_argument("--validation-examples", type=int,
                      help="score on the first N validation examples; default: all")
    search = parser.add_argument_group("search")
    search.add_argument("--tuner", choices=TUNERS, default="random",
                        help="search algorithm (default: %(default)s)")
    search.add_argument("--max-trials", type=int, default=10,
                        help="trials at most; caps Hyperband too (default: %(default)s)")
    search.add_argument("--epochs", type=int, default=10,
                        help="epochs per trial; Hyperband's max epochs (default: %(default)s)")
    search.add_argument("--hyperband-factor", type=int, default=3,
                        help="Hyperband's reduction factor (default: %(default)s)")
    search.add_argument("--objective", default="val_accuracy",
                        help="metric to optimise, NAME or NAME:min|max (default: %(default)s)")
    search.add_argument("--space", action="append", default=[], metavar="KEY=VALUES",
                        help="search-space override (repeatable), see below")
    search.add_argument("--space-file", help="JSON object of search-space overrides; --space "
                                             "values win over it")
    search.add_argument("--precision", default="auto",
                        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                        help="as for keras-vit train (default: %(default)s)")
    search.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                        help="compile train and predict steps with XLA (default: on)")
    search.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="run folder (default runs/tune_<dataset>)")
    out.add_argument("--project-name", default=DEFAULT_PROJECT,
                     help="search name, a sub-folder of the run folder (default: %(default)s)")
    out.add_argument("--overwrite", action="store_true",
                     help="start the search over instead of resuming it")
    out.add_argument("--retrain-epochs", type=int, default=0,
                     help="retrain the best settings from scratch for N epochs before export; "
                          "0 exports the best trial's model as trained (default)")
    out.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                     help="export the best model for TF Serving (default: on)")
    out.add_argument("--export-dir", default="savedmodels",
                     help="TF Serving model base folder (default: %(default)s)")
    out.add_argument("--model-name", help="export name (default vit_<dataset>_tuned)")
    out.add_argument("--verify-export", action=argparse.BooleanOptionalAction, default=True,
                     help="verify the export in a fresh process (default: on)")
    out.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                     help="Keras fit verbosity (default: %(default)s)")
    return parser


def main(argv=None):
    """Entry point of `keras-vit tune` and `python -m pipelines.tune`; returns the exit code."""
    args = build_parser().parse_args(argv)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    try:
        tune(TuneConfig(**vars(args)))
    except ValueError as error:
        print(f"keras-vit tune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-vit tune: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
