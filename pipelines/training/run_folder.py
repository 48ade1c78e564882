"""The run folder of a training job: what it keeps across a resume, and the callbacks writing it.

Layout of `<output-dir>/`: `run_config.json` (the options), `history.csv` (one row per epoch, CSVLogger),
`best.weights.h5` (best validation accuracy so far), `tensorboard/`,
`backup/` (BackupAndRestore: present only while a run is unfinished), and at
the end `best.keras`, `history.json`, `metrics.json` and the plots.

A folder holding a finished run is never reused silently: `--overwrite` moves
it aside to `<dir>.old-<time>`. A killed run resumes, but only with the
options it was started with (`--restart` moves it aside and starts over).

Example:
>>> plan = plan_run_dir(config)          # before any data is read
>>> resumed = prepare_run_dir(config, plan, log=print)
>>> model.fit(..., callbacks=training_callbacks("runs/digits", None, epoch_timer()))
"""

import dataclasses
import json
import os
import time

BEST_WEIGHTS = "best.weights.h5"  # best validation accuracy so far, kept across a resume
HISTORY_CSV = "history.csv"
BACKUP = "backup"
METRICS = "metrics.json"
RUN_CONFIG = "run_config.json"  # the resolved options, written when a run starts
# Files that make a folder hold a run that must not be silently reused.
RUN_FILES = (METRICS, HISTORY_CSV, BEST_WEIGHTS, "best.keras")
#: A backup is written at the end of the first epoch and then at the first epoch
#: end at least this long after the previous one: a kill loses at most about this
#: much training. Saving model and optimizer state takes ~0.4 s, as long as a
#: whole epoch of the default digits job, so a backup every epoch cost it ~35 s.
BACKUP_INTERVAL_SECONDS = 30.0


def epoch_timer():
    """A Keras callback whose `seconds` lists each epoch's wall time (images/s without compile).

    Example:
    >>> timer = epoch_timer(); model.fit(..., callbacks=[timer]); timer.seconds
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def interval_backup(backup_dir, min_interval_seconds=BACKUP_INTERVAL_SECONDS):
    """Keras `BackupAndRestore` that backs up at most once per `min_interval_seconds`.

    The first epoch is always backed up; later epoch ends only once the
    interval has passed since the last backup. Resuming works as with
    `BackupAndRestore`: from the last backed-up epoch (the epochs after it run
    again, and `read_history_csv` keeps their later rows).

    Args:
        backup_dir: the backup folder.
        min_interval_seconds: float >= 0. 0 backs up every epoch.

    Returns:
        A `keras.callbacks.BackupAndRestore`.

    Example:
    >>> model.fit(..., callbacks=[interval_backup("runs/digits/backup", 30)])
    """
    import keras

    class IntervalBackupAndRestore(keras.callbacks.BackupAndRestore):
        def __init__(self):
            # Two alternating backup files: a kill during a save leaves the previous one intact.
            super().__init__(backup_dir, double_checkpoint=True)
            self.min_interval_seconds = float(min_interval_seconds)
            self._last_backup = None

        def on_epoch_end(self, epoch, logs=None):
            now = time.monotonic()
            if (self._last_backup is None
                    or now - self._last_backup >= self.min_interval_seconds):
                super().on_epoch_end(epoch, logs)
                self._last_backup = time.monotonic()

    return IntervalBackupAndRestore()


def training_callbacks(run_dir, resumed_best, timer, keep_best=True):
    """CSV history, best checkpoint, TensorBoard, `timer`, then the resume backup.

    Args:
        run_dir: the run folder.
        resumed_best: float or None. Best validation accuracy of the epochs a
            resumed run already has, so the checkpoint only improves on it.
        timer: an `epoch_timer()`.
        keep_best: bool. Keep the weights of the best validation accuracy in
            `best.weights.h5`; False for a fit without validation, whose
            final weights are the run's.

    Returns:
        list of Keras callbacks, in the order they must run.
    """
    import keras

    # Weights only while training (about half the cost of a .keras archive per
    # save); the job writes best.keras once at the end.
    best = [keras.callbacks.ModelCheckpoint(
        os.path.join(run_dir, BEST_WEIGHTS), monitor="val_accuracy", mode="max",
        save_best_only=True, save_weights_only=True, initial_value_threshold=resumed_best)]
    return [
        keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY_CSV), append=True),
        *(best if keep_best else []),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        timer,
        # Last at each epoch end: an epoch is backed up only once its row and best
        # checkpoint are written (a kill in between repeats the epoch, and
        # `read_history_csv` keeps the later row).
        interval_backup(os.path.join(run_dir, BACKUP)),
    ]


def is_interrupted(run_dir):
    """Whether `run_dir` holds a run killed before its end (BackupAndRestore state)."""
    return os.path.isdir(os.path.join(run_dir, BACKUP))


def backed_up_epoch(run_dir):
    """The epoch a killed run in `run_dir` resumes from (0-based), 0 without a backup.

    Read from the backup's `training_metadata.json`, where Keras'
    `BackupAndRestore` records it and from which it restarts `fit` (unless
    that backup's weights fail to load: Keras then falls back to the one
    before, an epoch earlier).
    """
    path = os.path.join(run_dir, BACKUP, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def run_state(run_dir):
    """`"interrupted"` (resumable), `"finished"` (a run's files, nothing to resume) or `"new"`."""
    if is_interrupted(run_dir):
        return "interrupted"
    kept = [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]
    # Killed during its first epoch: CSVLogger's file holds at most a header,
    # no epoch was backed up, so there is nothing to keep or resume.
    if kept == [HISTORY_CSV] and not _has_epoch_rows(os.path.join(run_dir, HISTORY_CSV)):
        return "new"
    return "finished" if kept else "new"


def _has_epoch_rows(history_csv):
    with open(history_csv) as file:
        return sum(1 for line in file if line.strip()) > 1


def changed_options(run_dir, config, options=None):
    """Options that decide the model or data and differ from the run's saved ones.

    Args:
        run_dir: a run folder (with `run_config.json`, else nothing to compare).
        config: the resolved `TrainConfig` of this start.
        options: names of the run-defining options; default: the training job's.

    Returns:
        list of `(name, saved value, value now)`.
    """
    if options is None:
        from pipelines.training.config import RUN_DEFINING_OPTIONS as options

    saved = _saved_run_config(run_dir)
    if saved is None:
        return []  # a run from before run_config.json: nothing to compare
    # Through JSON, so tuples compare equal to the saved lists.
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    return [(name, saved.get(name), now[name]) for name in options
            if saved.get(name) != now[name]]


def _saved_run_config(run_dir):
    """The run's `run_config.json` as a dict, or None (missing or unreadable)."""
    try:
        with open(os.path.join(run_dir, RUN_CONFIG)) as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _flag(name):
    return "--" + name.replace("_", "-")


def plan_run_dir(config, options=None):
    """What to do with the run folder: `"new"`, `"resume"` or `"replace"`; nothing is touched.

    Runs before any data is read or weight loaded.

    Raises:
        ValueError: the folder holds a finished run (and no `--overwrite`), or
            an interrupted one started with other model or data options (and no
            `--restart`); one line naming the folder and the way out.
    """
    run_dir = config.output_dir
    state = run_state(run_dir)
    if state == "new":
        return "new"
    if config.overwrite:
        return "replace"
    if state == "finished":  # --restart is for an interrupted run: a finished one needs --overwrite
        restart = " (--restart only starts an interrupted run over)" if config.restart else ""
        raise ValueError(f"{run_dir} holds a finished run; pass --output-dir NEW for a new "
                         f"run, or --overwrite to move it aside to {run_dir}.old-<time>"
                         + restart)
    if config.restart:
        return "replace"
    saved_task = (_saved_run_config(run_dir) or {}).get("task")
    task = getattr(config, "task", None)
    if saved_task and task and saved_task != task:
        raise ValueError(f"{run_dir} holds an interrupted --task {saved_task} run and this is "
                         f"--task {task}; pass --output-dir NEW, the run's own --task to "
                         "resume it, or --restart to move it aside and start over")
    changed = changed_options(run_dir, config, options)
    if changed:
        listed = ", ".join(f"{_flag(name)} {now!r} (run: {saved!r})"
                           for name, saved, now in changed)
        raise ValueError(f"cannot resume the interrupted run in {run_dir} with other model or "
                         f"data options: {listed}; pass the run's options to resume it, or "
                         "--restart to move it aside and start over")
    return "resume"


def move_aside(run_dir):
    """Renames `run_dir` to a free `<run_dir>.old-<YYYYmmdd-HHMMSS>[-N]`; returns that path."""
    base = f"{os.path.normpath(run_dir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    target, count = base, 1
    while os.path.lexists(target):
        target, count = f"{base}-{count}", count + 1
    os.rename(run_dir, target)
    return target


def prepare_run_dir(config, plan, log):
    """Acts on `plan_run_dir`'s plan: resume, or a fresh folder with `run_config.json`.

    Args:
        config: the resolved `TrainConfig`.
        plan: `"new"`, `"resume"` or `"replace"` (moves the earlier run aside).
        log: callable taking one message per line.

    Returns:
        bool: whether the run resumes.
    """
    from pipelines.reporting import write_json

    run_dir = config.output_dir
    if plan == "resume":
        log(f"resuming the interrupted run in {run_dir}")
        return True
    if plan == "replace":
        log(f"moved the earlier run in {run_dir} aside to {move_aside(run_dir)}")
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, RUN_CONFIG), dataclasses.asdict(config))
    return False


def best_so_far(run_dir):
    """Best `val_accuracy` in the run folder's history (a resumed run), or None."""
    from pipelines.reporting import read_history_csv

    previous = read_history_csv(os.path.join(run_dir, HISTORY_CSV))
    return max(previous["val_accuracy"]) if previous.get("val_accuracy") else None
