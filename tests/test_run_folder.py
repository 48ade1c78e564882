"""The run folder's resume backup: written after the first epoch, then at most once per interval."""

import json

import keras
import numpy as np
import pytest

from pipelines.training.run_folder import interval_backup, run_state


class BackedUpEpochs(keras.callbacks.Callback):
    """Reads the backup's epoch after each epoch end (runs after the backup callback)."""

    def __init__(self, metadata_path):
        super().__init__()
        self.metadata_path = metadata_path
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(json.loads(self.metadata_path.read_text())["epoch"])


@pytest.mark.parametrize("interval, expected", [(0.0, [1, 2, 3, 4]), (3600.0, [1, 1, 1, 1])])
def test_backup_every_epoch_or_after_the_first_only(tmp_path, interval, expected):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    seen = BackedUpEpochs(tmp_path / "backup" / "training_metadata.json")
    model.fit(x, x[:, :1], epochs=4, verbose=0,
              callbacks=[interval_backup(str(tmp_path / "backup"), interval), seen])
    assert seen.epochs == expected
    assert not (tmp_path / "backup").exists()  # removed once training ends, as Keras does


def test_backup_resumes_from_the_last_backed_up_epoch(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, x[:, :1], epochs=5, verbose=0,
                  callbacks=[interval_backup(backup, 3600.0), Kill()])
    resumed = model.fit(x, x[:, :1], epochs=5, verbose=0, callbacks=[interval_backup(backup, 0)])
    assert resumed.epoch == [1, 2, 3, 4]  # only the first epoch was backed up



@pytest.mark.parametrize("history, state", [(None, "new"), ("", "new"), ("epoch,loss\n", "new"),
                                            ("epoch,loss\n0,1.5\n", "finished")])
def test_a_run_killed_in_its_first_epoch_is_new_not_finished(tmp_path, history, state):
    (tmp_path / "run_config.json").write_text("{}")
    if history is not None:
        (tmp_path / "history.csv").write_text(history)
    assert run_state(str(tmp_path)) == state
    (tmp_path / "best.weights.h5").write_bytes(b"x")
    assert run_state(str(tmp_path)) == "finished"
    (tmp_path / "backup").mkdir()
    assert run_state(str(tmp_path)) == "interrupted"
