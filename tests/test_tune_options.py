"""End-to-end tests of the `keras-vit tune` options that only a whole job shows.

Each option goes through the command line (`pipelines.tune.main`, what
`keras-vit tune` runs) on the embedded digits with tiny trials (depth 1, width
16-32, 128 training / 64 validation examples, XLA off), and its effect is read
back from what the job records: keras-tuner's `oracle.json` and
`trial_*/trial.json`, `search_space.json`, `leaderboard.json`, `summary.json`
and the export's `assets.extra/keras_vit_export.json`.

* `--tuner hyperband --hyperband-factor`, `--objective NAME:min` and
  `--project-name`: one Hyperband search;
* `--tuner grid`, `--objective NAME:max` (against the name's default
  direction), `--retrain-epochs`, `--image-size` and `--model-name`: one grid
  search whose winner is retrained and exported;
* `--tuner bayesian --deterministic`: seeded searches that must agree;
* resuming, the refusal of a changed search, and `--overwrite`: one project run
  again and again.

Searches run once per module (module-scoped fixtures) and several tests read
each. Four of them once showed defects, fixed since: `--overwrite` deleting the
project and failing, a changed `--tuner` crashing in keras-tuner's reload, a
learning-rate schedule that ran out an epoch early, and a second search in one
process not repeating the first.
"""

import contextlib
import io
import json
import pathlib
import shutil
import typing

import keras
import pytest

from pipelines import tune as tune_job

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow_only]

# depth 1, one head count, one patch size: a trial takes a few seconds.
TINY_SPACE = ["depth=1", "hidden_dim=16,32", "num_heads=2", "patch_size=4", "batch_size=64",
              "mlp_ratio=2"]
# Everything else fixed too, so that the grid is the two widths and nothing more.
GRID_SPACE = TINY_SPACE + ["pooling=gap", "dropout=0", "drop_path=0", "learning_rate=1e-3",
                           "weight_decay=0.05", "label_smoothing=0.1"]
TRAIN_EXAMPLES, BATCH_SIZE = 128, 64  # two optimizer steps per epoch
REFUSAL = "was started with another search space, tuner or objective"


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def tune_argv(data_dir, run_dir, *options, space=TINY_SPACE, max_trials=2, epochs=1):
    """`keras-vit tune` arguments of a tiny search in `run_dir` (no export), then `options`."""
    argv = ["--dataset", "digits", "--data-dir", data_dir, "--offline", "--train-examples",
            str(TRAIN_EXAMPLES), "--validation-examples", "64", "--max-trials", str(max_trials),
            "--epochs", str(epochs), "--precision", "float32", "--no-xla", "--no-export",
            "--verbose", "0", "--seed", "1", "--output-dir", str(run_dir)]
    for item in space:
        argv += ["--space", item]
    return argv + [str(option) for option in options]


class Run(typing.NamedTuple):
    code: int
    out: str
    err: str


def run_tune(argv):
    """`keras-vit tune ARGV` in this process: exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tune_job.main(argv)
    return Run(code, out.getvalue(), err.getvalue())


def run_ok(argv):
    run = run_tune(argv)
    assert run.code == 0, (run.err or run.out)[-3000:]
    return run


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


def read_trials(project):
    """trial id -> keras-tuner's `trial.json`, for every trial of the project."""
    return {path.parent.name[len("trial_"):]: read_json(path)
            for path in sorted(pathlib.Path(project).glob("trial_*/trial.json"))}


def observations(trial, metric):
    """The per-epoch values keras-tuner recorded for `metric` in a `trial.json`."""
    return [value for entry in trial["metrics"]["metrics"][metric]["observations"]
            for value in entry["value"]]


def unset_tf_global_seed():
    """Puts TensorFlow's global seed back to unset, as in a fresh `keras-vit tune` process.

    The job builds its input pipeline before it seeds (see
    `test_a_second_search_in_one_process_repeats_the_first`), so a seed left by
    an earlier search in this process would change the shuffle.
    """
    import tensorflow as tf

    tf.random.set_seed(None)


# ------------------------------------------------------------------------- hyperband


@pytest.fixture(scope="module")
def hyperband(digits_data_dir, tmp_path_factory):
    """`--tuner hyperband --hyperband-factor 2 --epochs 2 --max-trials 3
    --objective val_loss:min --project-name hb_search`."""
    run_dir = tmp_path_factory.mktemp("hyperband")
    run = run_ok(tune_argv(digits_data_dir, run_dir, "--tuner", "hyperband",
                           "--hyperband-factor", 2, "--objective", "val_loss:min",
                           "--project-name", "hb_search", max_trials=3, epochs=2))
    return run_dir, run_dir / "hb_search", run


def test_hyperband_runs_with_the_given_factor(hyperband):
    """Factor 2 over 2 epochs: two 1-epoch trials, then the better one continued for epoch 2.

    The default factor 3 would give a single round of 2-epoch trials instead.
    """
    _, project, _ = hyperband
    oracle = read_json(project / "oracle.json")
    assert oracle["factor"] == 2 and oracle["max_epochs"] == 2
    assert "brackets" in oracle  # Hyperband's own state; no other oracle has it
    trials = read_trials(project)
    values = [trials[k]["hyperparameters"]["values"] for k in sorted(trials)]
    assert [v["tuner/epochs"] for v in values] == [1, 1, 2]
    assert [v["tuner/initial_epoch"] for v in values] == [0, 0, 1]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    assert read_json(project / "search_space.json")["tuner"] == "hyperband"
    assert read_json(project / "summary.json")["tuner"] == "hyperband"
    leaderboard = read_json(project / "leaderboard.json")
    assert sorted(row["epochs"] for row in leaderboard) == [1, 1, 2]


def test_objective_name_min_scores_ranks_and_promotes_by_that_metric(hyperband):
    """`val_loss:min`: each score is the trial's lowest val_loss, and lowest ranks first."""
    _, project, run = hyperband
    trials = read_trials(project)
    for trial in trials.values():
        assert trial["score"] == pytest.approx(min(observations(trial, "val_loss")))
    leaderboard = read_json(project / "leaderboard.json")
    scores = [row["score"] for row in leaderboard]
    assert scores == sorted(scores) and scores[0] < scores[-1]
    summary = read_json(project / "summary.json")
    assert summary["objective"] == "val_loss"
    assert summary["best"]["trial"] == leaderboard[0]["trial"]
    assert summary["best"]["score"] == pytest.approx(scores[0])
    assert read_json(project / "search_space.json")["objective"] == "val_loss:min"
    # Hyperband continues the first-round trial with the lower val_loss.
    values = {k: t["hyperparameters"]["values"] for k, t in trials.items()}
    first_round = [k for k in values if values[k]["tuner/epochs"] == 1]
    continued = [values[k]["tuner/trial_id"] for k in values if values[k]["tuner/epochs"] == 2]
    assert continued == [min(first_round, key=lambda k: trials[k]["score"])]
    assert "rank  trial  val_loss" in run.out  # the printed leaderboard's header


def test_project_name_is_the_search_folder(hyperband):
    run_dir, project, _ = hyperband
    assert sorted(p.name for p in run_dir.iterdir()) == ["hb_search"]  # no default "search"
    for name in ("oracle.json", "tuner0.json", "search_space.json", "leaderboard.csv",
                 "leaderboard.json", "leaderboard.png", "summary.json"):
        assert (project / name).is_file(), name
    assert len(list(project.glob("trial_*/worker.json"))) == 3
    summary = read_json(project / "summary.json")
    assert summary["config"]["project_name"] == "hb_search"
    assert pathlib.Path(summary["leaderboard"]["json"]) == project / "leaderboard.json"


# --------------------------------------------------- grid, retraining and export

GRID_OPTIONS = ("--tuner", "grid", "--objective", "val_loss:max", "--project-name", "grid",
                "--image-size", 12)


@pytest.fixture(scope="module")
def grid(digits_data_dir, tmp_path_factory):
    """`--tuner grid --max-trials 4 --objective val_loss:max --image-size 12
    --retrain-epochs 3 --model-name digits_options_test --export` over two widths
    (exported without the fresh-process check, which test_export.py covers).

    Records every `ViTHyperModel.fit` call: the trials', then the retraining's.
    """
    from keras_vit.tuning import ViTHyperModel

    run_dir = tmp_path_factory.mktemp("grid")
    fits = []
    original_fit = ViTHyperModel.fit

    def recording_fit(self, hp, model, *args, **kwargs):
        start_step = int(model.optimizer.iterations.numpy())
        history = original_fit(self, hp, model, *args, **kwargs)
        fits.append({"hyperparameters": dict(hp.values), "epochs": kwargs.get("epochs"),
                     "history": {k: list(v) for k, v in history.history.items()},
                     "start_step": start_step, "steps": int(model.optimizer.iterations.numpy()),
                     "model": id(model), "input_shape": tuple(model.input_shape)})
        return history

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ViTHyperModel, "fit", recording_fit)
        run = run_ok(tune_argv(digits_data_dir, run_dir, *GRID_OPTIONS, "--retrain-epochs", 3,
                               "--model-name", "digits_options_test", "--export",
                               "--no-verify-export", "--export-dir", run_dir / "exports",
                               space=GRID_SPACE, max_trials=4))
    return run_dir, run_dir / "grid", run, fits


def test_grid_search_runs_each_grid_point_once(grid):
    _, project, _, _ = grid
    trials = read_trials(project)
    assert len(trials) == 2  # the grid is exhausted before --max-trials 4
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    leaderboard = read_json(project / "leaderboard.json")
    assert sorted(row["hidden_dim"] for row in leaderboard) == [16, 32]
    assert read_json(project / "search_space.json")["tuner"] == "grid"
    assert read_json(project / "summary.json")["tuner"] == "grid"


def test_objective_direction_overrides_the_names_default(grid):
    """`val_loss:max` maximises val_loss although a bare `val_loss` is minimised."""
    _, project, run, _ = grid
    trials = read_trials(project)
    for trial in trials.values():
        assert trial["score"] == pytest.approx(max(observations(trial, "val_loss")))
    leaderboard = read_json(project / "leaderboard.json")
    scores = [row["score"] for row in leaderboard]
    assert scores[0] > scores[1]  # the highest val_loss ranks first
    summary = read_json(project / "summary.json")
    assert summary["objective"] == "val_loss"
    assert summary["best"]["trial"] == max(trials, key=lambda k: trials[k]["score"])
    assert summary["best"]["score"] == pytest.approx(scores[0])
    assert read_json(project / "search_space.json")["objective"] == "val_loss:max"
    assert f"best trial {summary['best']['trial']}: val_loss" in run.out


def test_retrain_epochs_retrains_the_best_settings_from_scratch(grid):
    _, project, run, fits = grid
    *trials, retraining = fits  # the two trials, then the retraining
    assert [(f["epochs"], len(f["history"]["loss"])) for f in trials] == [(1, 1), (1, 1)]
    assert retraining["epochs"] == 3
    assert len(retraining["history"]["loss"]) == len(retraining["history"]["val_loss"]) == 3
    # A new model with a fresh optimizer, not a trial's model trained further.
    assert retraining["start_step"] == 0
    assert retraining["model"] not in {f["model"] for f in trials}
    summary = read_json(project / "summary.json")
    assert retraining["hyperparameters"] == summary["best"]["hyperparameters"]
    assert "retraining the best settings for 3 epochs" in run.out
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["config"]["retrain_epochs"] == 3


def test_retraining_schedule_spans_every_epoch(grid):
    retraining = grid[3][-1]
    assert retraining["steps"] == 3 * TRAIN_EXAMPLES // BATCH_SIZE
    val_loss = retraining["history"]["val_loss"]
    assert val_loss[2] != val_loss[1]  # the last epoch still trains


def test_model_name_and_image_size_reach_the_export(grid):
    run_dir, project, _, fits = grid
    version = run_dir / "exports" / "digits_options_test" / "1"
    assert (version / "saved_model.pb").is_file()
    summary = read_json(project / "summary.json")
    assert pathlib.Path(summary["export"]) == version
    metadata = read_json(version / "assets.extra" / "keras_vit_export.json")
    assert metadata["model_name"] == "digits_options_test"
    assert metadata["image_shape"] == [12, 12, 1]  # digits are 8x8: resized
    assert read_json(project / "search_space.json")["image_shape"] == [12, 12, 1]
    assert {fit["input_shape"] for fit in fits} == {(None, 12, 12, 1)}


@pytest.mark.parametrize("tuner", ["hyperband", "bayesian"])
def test_resuming_with_another_tuner_is_refused(grid, digits_data_dir, tmp_path, tuner):
    _, grid_project, _, _ = grid
    run_dir = tmp_path / "run"
    shutil.copytree(grid_project, run_dir / "grid")  # the finished grid search
    refused = run_tune(tune_argv(digits_data_dir, run_dir, *GRID_OPTIONS, "--tuner", tuner,
                                 space=GRID_SPACE, max_trials=4))
    assert refused.code == 2
    assert REFUSAL in refused.err


# -------------------------------------------------------------------------- bayesian


@pytest.fixture(scope="module")
def bayesian(digits_data_dir, tmp_path_factory):
    """`--tuner bayesian --deterministic --seed 1` three times, projects `first`,
    `second` (each as in a fresh process) and `again` (right after `second`)."""
    run_dir = tmp_path_factory.mktemp("bayesian")
    for name in ("first", "second", "again"):
        if name != "again":
            unset_tf_global_seed()
        run_ok(tune_argv(digits_data_dir, run_dir, "--tuner", "bayesian", "--deterministic",
                         "--project-name", name, max_trials=1))
    return run_dir


def test_bayesian_search_runs_the_bayesian_oracle(bayesian):
    project = bayesian / "first"
    oracle = read_json(project / "oracle.json")
    assert {"num_initial_points", "alpha", "beta"} <= set(oracle)  # BayesianOptimizationOracle
    assert "brackets" not in oracle
    trials = read_trials(project)
    assert [t["status"] for t in trials.values()] == ["COMPLETED"]
    assert read_json(project / "search_space.json")["tuner"] == "bayesian"
    assert read_json(project / "summary.json")["tuner"] == "bayesian"


def test_deterministic_searches_repeat_exactly(bayesian, digits_data_dir):
    """Same seed with `--deterministic`: the same trial with the same metrics, bit for bit."""
    first, second = read_trials(bayesian / "first"), read_trials(bayesian / "second")
    assert sorted(first) == sorted(second) == ["0"]
    assert first["0"]["hyperparameters"]["values"] == second["0"]["hyperparameters"]["values"]
    assert first["0"]["metrics"] == second["0"]["metrics"]
    assert first["0"]["score"] == second["0"]["score"]
    assert read_json(bayesian / "first" / "summary.json")["config"]["deterministic"] is True
    # The flag reaches the training pipeline: tf.data keeps its order only with it.
    config = tune_job.TuneConfig(dataset="digits", data_dir=digits_data_dir, offline=True,
                                 train_examples=TRAIN_EXAMPLES, seed=1)
    assert tune_job.load_tune_data(config).train.options().deterministic is False
    config.deterministic = True
    assert tune_job.load_tune_data(config).train.options().deterministic is True


def test_a_second_search_in_one_process_repeats_the_first(bayesian):
    first, again = read_trials(bayesian / "first"), read_trials(bayesian / "again")
    assert first["0"]["hyperparameters"]["values"] == again["0"]["hyperparameters"]["values"]
    assert first["0"]["metrics"] == again["0"]["metrics"]


# ------------------------------------------------------- resume, refusal, overwrite

NARROWER_SPACE = [item for item in TINY_SPACE if not item.startswith("hidden_dim")] + [
    "hidden_dim=16"]


def snapshot(project):
    """What a refused run must leave alone: every `trial.json` and `worker.json`, the
    recorded search."""
    workers = {path.parent.name: path.read_text()
               for path in sorted(project.glob("trial_*/worker.json"))}
    return {"trials": read_trials(project), "workers": workers,
            "search_space": (project / "search_space.json").read_text()}


@pytest.fixture(scope="module")
def resumed(digits_data_dir, tmp_path_factory):
    """One trial; the same command with `--max-trials 2`; then three changed commands
    (space, objective, tuner), each expected to be refused.

    Returns the run folder, a `snapshot` of the project after each step, and the runs.
    """
    run_dir = tmp_path_factory.mktemp("resume")
    project = run_dir / "search"
    run_ok(tune_argv(digits_data_dir, run_dir, max_trials=1))
    steps = {"first": snapshot(project)}
    resume = run_ok(tune_argv(digits_data_dir, run_dir, max_trials=2))
    steps["resumed"] = snapshot(project)
    refusals = {}
    for name, argv in {
        "space": tune_argv(digits_data_dir, run_dir, space=NARROWER_SPACE),
        "objective": tune_argv(digits_data_dir, run_dir, "--objective", "val_loss"),
        "tuner": tune_argv(digits_data_dir, run_dir, "--tuner", "grid"),
    }.items():
        refusals[name] = run_tune(argv)
        steps[name] = snapshot(project)
    return run_dir, steps, resume, refusals


def test_rerun_resumes_the_search(resumed):
    """The same command with more trials keeps trial 0 as it was and runs trial 1 only."""
    _, steps, resume, _ = resumed
    before, after = steps["first"], steps["resumed"]
    assert sorted(before["trials"]) == ["0"] and sorted(after["trials"]) == ["0", "1"]
    assert after["trials"]["0"] == before["trials"]["0"]
    # Trial 0 was not run again: its worker.json still has the first start time.
    assert after["workers"]["trial_0"] == before["workers"]["trial_0"]
    assert after["trials"]["1"]["status"] == "COMPLETED"
    assert "1 finished trial(s) kept, 0 interrupted trial(s)" in resume.out


@pytest.mark.parametrize("change", ["space", "objective", "tuner"])
def test_changed_search_is_refused_and_left_alone(resumed, change):
    _, steps, _, refusals = resumed
    refused = refusals[change]
    assert refused.code == 2, refused.err[-3000:]
    assert REFUSAL in refused.err and "--overwrite" in refused.err
    assert "Traceback" not in refused.err
    assert steps[change] == steps["resumed"]  # trials, workers, search_space.json untouched


def test_overwrite_starts_a_changed_search_over(resumed, digits_data_dir, tmp_path):
    run_dir, steps, _, _ = resumed
    shutil.copytree(run_dir / "search", tmp_path / "search")  # the resumed search
    project = tmp_path / "search"
    run = run_tune(tune_argv(digits_data_dir, tmp_path, "--overwrite", space=NARROWER_SPACE,
                             max_trials=1))
    assert run.code == 0 and project.is_dir(), (run.err[-1000:], project.is_dir())
    assert "resuming" not in run.out
    trials = read_trials(project)
    assert sorted(trials) == ["0"]
    assert [row["hidden_dim"] for row in read_json(project / "leaderboard.json")] == [16]
    assert (project / "search_space.json").read_text() != steps["resumed"]["search_space"]
    assert read_json(project / "summary.json")["config"]["overwrite"] is True
