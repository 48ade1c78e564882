"""keras-tuner tuners for `keras-vit tune`: the factory, worker records, distributed roles.

Example:
>>> tuner = make_tuner("bayesian", hypermodel, objective="val_accuracy", max_trials=20,
...                    epochs=10, directory="runs/tune", project_name="search")
"""

import json
import os
import socket
import time

from pipelines.options import TUNERS


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


def trial_worker(project_dir, trial_id):
    path = os.path.join(project_dir, f"trial_{trial_id}", WORKER_FILE)
    try:
        with open(path) as handle:
            return json.load(handle).get("tuner_id")
    except (OSError, ValueError):
        return None



def interrupted_trials(oracle):
    """Ids of the trials a resumed search runs again: those left RUNNING by a killed search.

    keras-tuner's `Oracle.reload` puts the trials that were ongoing when the
    search stopped (still `RUNNING` in their `trial.json`) on its private retry
    queue and hands them out again first. Their public status says the same
    without touching that queue; `tests/test_tune_job.py` checks the two agree,
    so a keras-tuner that changes this fails there.

    Args:
        oracle: a reloaded `keras_tuner.Oracle` (`tuner.oracle`).

    Returns:
        sorted list of trial ids.
    """
    return sorted(trial_id for trial_id, trial in oracle.trials.items()
                  if trial.status == "RUNNING")
