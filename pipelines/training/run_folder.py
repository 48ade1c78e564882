"""The run folder of a training job: what it keeps across a resume, and the callbacks writing it.

Layout of `<output-dir>/`: `history.csv` (one row per epoch, CSVLogger),
`best.weights.h5` (best validation accuracy so far), `tensorboard/`,
`backup/` (BackupAndRestore: present only while a run is unfinished), and at
the end `best.keras`, `history.json`, `metrics.json` and the plots.

Example:
>>> resumed = prepare_run_dir("runs/digits", log=print)
>>> model.fit(..., callbacks=training_callbacks("runs/digits", None, epoch_timer()))
"""

import os
import shutil
import time

BEST_WEIGHTS = "best.weights.h5"  # best validation accuracy so far, kept across a resume
HISTORY_CSV = "history.csv"
BACKUP = "backup"
METRICS = "metrics.json"
# What a finished run leaves and a fresh run in the same folder replaces.
RUN_FILES = (HISTORY_CSV, "best.keras", BEST_WEIGHTS, METRICS, "tensorboard")


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


def training_callbacks(run_dir, resumed_best, timer):
    """CSV history, best checkpoint, TensorBoard, `timer`, then the resume backup.

    Args:
        run_dir: the run folder.
        resumed_best: float or None. Best validation accuracy of the epochs a
            resumed run already has, so the checkpoint only improves on it.
        timer: an `epoch_timer()`.

    Returns:
        list of Keras callbacks, in the order they must run.
    """
    import keras

    return [
        keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY_CSV), append=True),
        # Weights only while training (about half the cost of a .keras archive per
        # save); the job writes best.keras once at the end.
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, BEST_WEIGHTS), monitor="val_accuracy", mode="max",
            save_best_only=True, save_weights_only=True, initial_value_threshold=resumed_best),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        timer,
        # Last at each epoch end: an epoch is backed up only once its row and best
        # checkpoint are written (a kill in between repeats the epoch, and
        # `read_history_csv` keeps the later row). Two alternating backup files,
        # so a kill during the save leaves the previous one intact.
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, BACKUP),
                                         double_checkpoint=True),
    ]


def is_interrupted(run_dir):
    """Whether `run_dir` holds a run killed before its end (BackupAndRestore state)."""
    return os.path.isdir(os.path.join(run_dir, BACKUP))


def prepare_run_dir(run_dir, log):
    """Keeps the state of an interrupted run (to resume); clears a finished one.

    Returns:
        bool: whether the run resumes.
    """
    if is_interrupted(run_dir):
        log(f"resuming the interrupted run in {run_dir}")
        return True
    if os.path.isdir(run_dir):
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(run_dir, exist_ok=True)
    return False


def best_so_far(run_dir):
    """Best `val_accuracy` in the run folder's history (a resumed run), or None."""
    from pipelines.reporting import read_history_csv

    previous = read_history_csv(os.path.join(run_dir, HISTORY_CSV))
    return max(previous["val_accuracy"]) if previous.get("val_accuracy") else None
