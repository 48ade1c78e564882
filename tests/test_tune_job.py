"""Tests of the `keras-vit tune` job (pipelines/tune.py).

Tiny searches on the embedded digits: depth 1, width 16-32, one epoch of 128
examples, XLA off. The distributed test runs keras-tuner's chief/worker mode on
loopback with a chief and two workers in subprocesses.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap

import keras
import pytest

from pipelines import tune as tune_job

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_SPACE = ["depth=1", "hidden_dim=16,32", "num_heads=2", "patch_size=4", "batch_size=64",
              "mlp_ratio=2"]


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tfds folder with digits prepared once, before any subprocess reads it."""
    from pipelines.data import load_datasets

    path = str(tmp_path_factory.mktemp("tfds"))
    load_datasets("digits", data_dir=path, batch_size=64)
    return path


def tiny_config(data_dir, run_dir, **overrides):
    values = dict(dataset="digits", data_dir=data_dir, offline=True, train_examples=128,
                  validation_examples=64, max_trials=2, epochs=1, space=list(TINY_SPACE),
                  precision="float32", xla=False, output_dir=str(run_dir), export=False,
                  export_dir=str(run_dir / "savedmodels"), verbose=0, seed=1)
    values.update(overrides)
    return tune_job.TuneConfig(**values)


def read_trials(project_dir):
    trials = {}
    for path in sorted(pathlib.Path(project_dir).glob("trial_*/trial.json")):
        trial = json.loads(path.read_text())
        trials[trial["trial_id"]] = trial
    return trials


class CountTrainings(keras.callbacks.Callback):
    """Counts trials trained in this process; raises Ctrl-C in the `interrupt_at`-th one.

    Tuners deep-copy callbacks for each trial, so the count lives on the class.
    """

    count = 0
    interrupt_at = None

    def on_train_begin(self, logs=None):
        CountTrainings.count += 1

    def on_train_batch_end(self, batch, logs=None):
        if CountTrainings.count == CountTrainings.interrupt_at:
            raise KeyboardInterrupt  # what a killed/Ctrl-C'd search leaves behind


# ------------------------------------------------------------------------ CLI input


def test_parse_space_arguments():
    assert tune_job.parse_space_arg("depth=2,4") == ("depth", [2, 4])
    assert tune_job.parse_space_arg("pooling=gap") == ("pooling", "gap")
    assert tune_job.parse_space_arg("dropout=0") == ("dropout", 0)
    assert tune_job.parse_space_arg("learning_rate=1e-4:3e-3:log") == (
        "learning_rate", {"min": 1e-4, "max": 3e-3, "sampling": "log"})
    assert tune_job.parse_space_arg("hidden_dim=32:96:32") == (
        "hidden_dim", {"min": 32, "max": 96, "step": 32})
    with pytest.raises(ValueError, match="expected KEY=VALUES"):
        tune_job.parse_space_arg("depth")


def test_space_file_then_command_line(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"depth": [2, 4], "pooling": ["gap"], "dropout": 0.0}))
    assert tune_job.load_space(str(path), ["depth=6"]) == {
        "depth": 6, "pooling": ["gap"], "dropout": 0.0}
    assert tune_job.parse_objective("val_loss").direction == "min"
    assert tune_job.parse_objective("val_accuracy").direction == "max"
    assert tune_job.parse_objective("accuracy:min").direction == "min"
    for bad, needle in (("bogus", "the trials log loss, accuracy, val_loss, val_accuracy; "
                                  "received the name 'bogus'"),
                        ("val_loss:down", "expected NAME or NAME:min / NAME:max")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            tune_job.parse_objective(bad)


@pytest.mark.parametrize("space, space_file, message", [
    (["hidden_dim=16,32", "num_heads=3"], None, "3 heads divide none of the widths"),
    ([], {"depth": []}, "'depth': empty list of choices"),
])
def test_invalid_space_fails_before_any_trial(data_dir, tmp_path, capsys, space, space_file,
                                              message):
    argv = ["--dataset", "digits", "--data-dir", data_dir, "--offline", "--no-export",
            "--output-dir", str(tmp_path / "run"), "--precision", "float32", "--no-xla"]
    for item in space:
        argv += ["--space", item]
    if space_file is not None:
        (tmp_path / "space.json").write_text(json.dumps(space_file))
        argv += ["--space-file", str(tmp_path / "space.json")]
    assert tune_job.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("run/**/trial_*"))  # no trial ever started


def test_unknown_objective_fails_before_anything_is_written(data_dir, tmp_path, capsys):
    argv = ["--dataset", "digits", "--data-dir", data_dir, "--offline", "--no-export",
            "--output-dir", str(tmp_path / "run"), "--objective", "bogus"]
    assert tune_job.main(argv) == 2
    assert "--objective 'bogus': the trials log" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- local search


@pytest.mark.slow
def test_interrupted_search_resumes_then_exports_its_winner(data_dir, tmp_path):
    """2 trials: Ctrl-C in the second, rerun runs only that one, then exports the best."""
    run_dir = tmp_path / "run"
    project = run_dir / "search"
    CountTrainings.count, CountTrainings.interrupt_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        tune_job.tune(tiny_config(data_dir, run_dir), log=lambda *_: None,
                      callbacks=[CountTrainings()])
    before = read_trials(project)
    assert {k: t["status"] for k, t in before.items()} == {"0": "COMPLETED", "1": "RUNNING"}
    # The public stand-in for keras-tuner's private retry queue: if keras-tuner
    # stops re-running RUNNING trials first, this fails.
    from keras_vit.tuning import ViTHyperModel

    reloaded = tune_job.make_tuner(
        "random", ViTHyperModel((8, 8, 1), 10, tune_job.load_space(None, TINY_SPACE)),
        objective="val_accuracy", max_trials=2, epochs=1, directory=str(run_dir),
        project_name="search")
    assert tune_job.interrupted_trials(reloaded.oracle) == ["1"]
    assert reloaded.oracle.get_state()["retry_queue"] == ["1"]
    assert reloaded.oracle.create_trial("tuner0").trial_id == "1"  # handed out again first

    CountTrainings.count, CountTrainings.interrupt_at = 0, None
    messages = []
    # The fresh-process verification (~30 s here) is tested in test_export.py.
    summary = tune_job.tune(tiny_config(data_dir, run_dir, export=True, verify_export=False),
                            log=messages.append, callbacks=[CountTrainings()])
    assert CountTrainings.count == 1  # only the interrupted trial ran again
    assert any("1 finished trial(s) kept, 1 interrupted" in m for m in messages)
    after = read_trials(project)
    assert {k: t["status"] for k, t in after.items()} == {"0": "COMPLETED", "1": "COMPLETED"}
    assert after["0"]["score"] == before["0"]["score"]  # the finished trial was kept
    assert after["1"]["hyperparameters"]["values"] == before["1"]["hyperparameters"]["values"]

    # Leaderboard: printed, CSV, JSON and PNG, best first.
    leaderboard = json.loads((project / "leaderboard.json").read_text())
    assert [row["trial"] for row in leaderboard] != [] and len(leaderboard) == 2
    assert leaderboard[0]["score"] >= leaderboard[1]["score"]
    assert {"hidden_dim", "num_heads", "learning_rate", "batch_size"} <= set(leaderboard[0])
    assert all(row["tuner_id"] == "tuner0" for row in leaderboard)
    assert (project / "leaderboard.csv").read_text().startswith("rank,trial,status,score")
    assert (project / "leaderboard.png").stat().st_size > 1000
    assert any(m.startswith("rank  trial  val_accuracy") for m in messages)

    # The winner is exported as savedmodels/<name>/1.
    assert summary["best"]["trial"] == leaderboard[0]["trial"]
    export_dir = pathlib.Path(summary["export"])
    assert export_dir == run_dir / "savedmodels" / "vit_digits_tuned" / "1"
    assert (export_dir / "saved_model.pb").exists()
    assert json.loads((project / "summary.json").read_text())["export"] == str(export_dir)


@pytest.mark.slow
def test_tune_cli_with_affine_augmentation(data_dir, tmp_path, capsys):
    """`keras-vit tune --augmentation affine`: the choice train has, end to end."""
    run_dir = tmp_path / "run"
    argv = ["--dataset", "digits", "--data-dir", data_dir, "--offline", "--augmentation",
            "affine", "--train-examples", "64", "--validation-examples", "64", "--max-trials",
            "1", "--epochs", "1", "--precision", "float32", "--no-xla", "--no-export",
            "--output-dir", str(run_dir), "--verbose", "0"]
    for item in TINY_SPACE:
        argv += ["--space", item]
    assert tune_job.main(argv) == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((run_dir / "search" / "summary.json").read_text())
    assert summary["config"]["augmentation"] == "affine"
    assert summary["completed_trials"] == 1
    assert [t["status"] for t in read_trials(run_dir / "search").values()] == ["COMPLETED"]


# ---------------------------------------------------------------- distributed search

WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import keras
    from pipelines.tune import TuneConfig, tune

    barrier, config = sys.argv[1], json.loads(sys.argv[2])

    class Barrier(keras.callbacks.Callback):
        # Both workers hold a trial before either trains: with 2 trials, each runs one.
        def on_train_begin(self, logs=None):
            open(os.path.join(barrier, os.environ["KERASTUNER_TUNER_ID"]), "w").close()
            deadline = time.time() + 300
            while len(os.listdir(barrier)) < 2 and time.time() < deadline:
                time.sleep(0.2)

    summary = tune(TuneConfig(**config), callbacks=[Barrier()])
    print("WORKER_SUMMARY", json.dumps(summary))
""")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_with_a_chief_and_two_workers(data_dir, tmp_path):
    run_dir, barrier = tmp_path / "run", tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    port = free_port()
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
               PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    config = {k: v for k, v in vars(tiny_config(data_dir, run_dir)).items()}
    chief_argv = [sys.executable, "-m", "pipelines.tune", "--dataset", "digits", "--data-dir",
                  data_dir, "--offline", "--train-examples", "128", "--validation-examples",
                  "64", "--max-trials", "2", "--epochs", "1", "--precision", "float32",
                  "--no-xla", "--no-export", "--output-dir", str(run_dir), "--verbose", "0",
                  "--seed", "1"] + [a for s in TINY_SPACE for a in ("--space", s)]
    processes = {"chief": subprocess.Popen(chief_argv, cwd=REPO, env=dict(
        env, KERASTUNER_TUNER_ID="chief"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)}
    for worker in ("tuner0", "tuner1"):
        processes[worker] = subprocess.Popen(
            [sys.executable, str(script), str(barrier), json.dumps(config)], cwd=REPO,
            env=dict(env, KERASTUNER_TUNER_ID=worker), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name], _ = process.communicate(timeout=420)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} failed:\n{outputs.get(name, '')[-3000:]}"

    project = run_dir / "search"
    trials = read_trials(project)
    assert sorted(trials) == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    ran_by = {json.loads((project / f"trial_{k}" / "worker.json").read_text())["tuner_id"]
              for k in trials}
    assert ran_by == {"tuner0", "tuner1"}  # one shared search, trials from both workers
    oracle = json.loads((project / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1"] and oracle["ongoing_trials"] == {}
    leaderboard = json.loads((project / "leaderboard.json").read_text())  # by the chief
    assert {row["tuner_id"] for row in leaderboard} == {"tuner0", "tuner1"}
    assert "distributed tuning: chief serving the oracle" in outputs["chief"]
