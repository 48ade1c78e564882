"""Tests of the training job (pipelines/train.py) and its command line.

Tiny models on the embedded digits set, XLA off and float32 (the slow parts of
a real run are compilation and the precision probe, not arithmetic); every
file goes under pytest's tmp paths. Exactly one run exports (with the
fresh-process verification); the others pass --no-export.
"""

import contextlib
import csv
import dataclasses
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from pipelines import train as train_module
from pipelines.onednn import onednn_enabled, onednn_note
from pipelines.precision import PRECISIONS, choose_precision, cpu_has_amx_bf16, cpu_has_bf16
from pipelines.train import TrainConfig, main, train

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = dict(variant="Ti/2", hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)
REQUIRED_METRICS = ("test_accuracy", "test_loss", "train_images_per_second",
                    "inference_images_per_second", "wall_seconds", "precision", "parameters",
                    "svc_test_accuracy")


def tiny_flags(batch_size=128):
    flags = []
    for key, value in TINY.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags + ["--batch-size", str(batch_size), "--precision", "float32", "--no-xla",
                    "--verbose", "0"]


def tiny_parameters(image_shape=(8, 8, 1), num_classes=10, patch=2, pooling="gap"):
    """Parameter count of the TINY ViT (digits preset pooling: gap), by hand."""
    height, width, channels = image_shape
    d, m = TINY["hidden_dim"], TINY["mlp_dim"]
    tokens = (height // patch) * (width // patch) + (pooling == "token")
    block = 2 * d + 4 * (d * d + d) + 2 * d + d * m + m + m * d + d
    return (patch * patch * channels * d + d + (d if pooling == "token" else 0) + tokens * d
            + TINY["depth"] * block + 2 * d + d * num_classes + num_classes)


def subprocess_env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def read_history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def complete_rows(path):
    """Rows of a CSV that may be being written: only newline-terminated data lines count."""
    try:
        text = pathlib.Path(path).read_text()
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    return max(len(lines) - 1, 0)


def run_main(argv):
    """`pipelines.train.main(argv)` with its stdout/stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


pytestmark = pytest.mark.usefixtures("restore_dtype_policy")


# ------------------------------------------------------------ end to end (export on)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, digits_data_dir):
    """One complete `keras-vit train` run: one epoch, baseline and verified export on."""
    root = tmp_path_factory.mktemp("e2e")
    run_dir, export_dir = root / "run", root / "savedmodels"
    argv = tiny_flags() + ["--epochs", "1", "--deterministic", "--seed", "3",
                           "--data-dir", digits_data_dir, "--export-dir", str(export_dir)]
    policy = keras.config.dtype_policy()
    try:
        code, out, err = run_main(argv + ["--output-dir", str(run_dir)])
    finally:
        keras.config.set_dtype_policy(policy)
    return dict(code=code, out=out, err=err, run_dir=run_dir, export_dir=export_dir, argv=argv)


@pytest.mark.slow
def test_cli_run_writes_every_artifact(cli_run):
    assert cli_run["code"] == 0, cli_run["err"]
    run_dir = cli_run["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in REQUIRED_METRICS:
        assert key in metrics, key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert np.isfinite(metrics["test_loss"]) and metrics["test_loss"] > 0
    assert metrics["train_images_per_second"] > 0
    assert metrics["inference_images_per_second"] > 0
    assert metrics["wall_seconds"] > 0
    assert metrics["precision"] == "float32"
    assert metrics["onednn"] is onednn_enabled()
    assert f"XLA: off; {onednn_note()}" in cli_run["out"]
    assert metrics["parameters"] == tiny_parameters()
    assert metrics["epochs_this_run"] == 1 and metrics["resumed"] is False

    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [0.0]
    # The digits preset fits on train+validation: no validation pass, no best-epoch file.
    assert metrics["fit_on"] == "train+validation"
    assert "fit on train+validation: 1437 images" in cli_run["out"]
    for key in ("loss", "accuracy"):
        assert len(history[key]) == 1 and np.isfinite(history[key][0])
    assert "val_loss" not in history and "val_accuracy" not in history
    assert not (run_dir / "best.weights.h5").exists()
    rows = read_history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0]
    assert float(rows[0]["loss"]) == pytest.approx(history["loss"][0])

    import matplotlib.image

    for name in ("training_curves.png", "confusion_matrix.png", "attention_maps.png"):
        path = run_dir / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] >= 100 and pixels.shape[1] >= 100, (name, pixels.shape)
        assert pixels[..., :3].std() > 0.01, name  # not a blank canvas

    best = keras.models.load_model(run_dir / "best.keras")
    assert best.count_params() == tiny_parameters()
    assert best.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)

    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    version = cli_run["export_dir"] / "vit_digits" / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    assert not (run_dir / "backup").exists()  # a finished run leaves no resume state


@pytest.mark.slow
def test_cli_summary_prints_the_svc_baseline_beside_the_accuracy(cli_run):
    metrics = json.loads((cli_run["run_dir"] / "metrics.json").read_text())
    lines = cli_run["out"].splitlines()
    accuracy_line = next(i for i, line in enumerate(lines) if line.startswith("test accuracy"))
    assert f"{metrics['test_accuracy']:.4f}" in lines[accuracy_line]
    assert lines[accuracy_line + 1].startswith("SVC baseline")
    assert f"{metrics['svc_test_accuracy']:.4f}" in lines[accuracy_line + 1]


@pytest.mark.slow
def test_best_keras_loads_compiled_with_only_keras_vit_imported(cli_run):
    """`import keras_vit` registers the recipe's loss and metric: best.keras loads compiled."""
    script = ("import sys, keras, keras_vit, numpy as np\n"
              "model = keras.models.load_model(sys.argv[1])\n"
              "print(type(model.loss).__name__, model.loss.label_smoothing)\n")
    done = subprocess.run([sys.executable, "-c", script, str(cli_run["run_dir"] / "best.keras")],
                          cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["SmoothedCrossentropy", "0.1"]


@pytest.mark.slow
def test_svc_baseline_equals_an_independent_sklearn_computation(cli_run):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    digits = load_digits()
    labels = digits.target
    indices = np.arange(len(labels))
    rest, test = train_test_split(indices, test_size=0.2, stratify=labels, random_state=0)
    # The tfds set stores round(v * 255 / 16) as pixels; the baseline sees pixels / 255.
    pixels = np.round(digits.images * 255.0 / 16.0).reshape(len(labels), -1) / 255.0
    # Fitted on what the ViT fits on: the preset's train+validation.
    expected = SVC().fit(pixels[rest], labels[rest]).score(pixels[test], labels[test])
    metrics = json.loads((cli_run["run_dir"] / "metrics.json").read_text())
    assert abs(metrics["svc_test_accuracy"] - expected) <= 1e-9
    assert expected > 0.95
    assert "fitted on train+validation" in cli_run["out"]


@pytest.mark.slow
def test_fit_on_train_validates_each_epoch_and_keeps_the_best(tmp_path, digits_data_dir):
    """`--fit-on train`: validation scored per epoch, the best epoch's weights kept, and the
    SVC fitted on the training split alone (checked against scikit-learn directly)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    run_dir = tmp_path / "run"
    code, out, err = run_main(tiny_flags() + [
        "--epochs", "2", "--fit-on", "train", "--data-dir", digits_data_dir, "--no-export",
        "--output-dir", str(run_dir), "--export-dir", str(tmp_path / "savedmodels")])
    assert code == 0, err
    assert "fit on train+validation" not in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit_on"] == "train"
    history = json.loads((run_dir / "history.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(history[key]) == 2 and np.all(np.isfinite(history[key])), key
    assert (run_dir / "best.weights.h5").is_file()
    saved = json.loads((run_dir / "run_config.json").read_text())
    assert saved["fit_on"] == "train"

    digits = load_digits()
    labels = digits.target
    rest, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                  random_state=0)
    fit, _ = train_test_split(rest, test_size=0.2, stratify=labels[rest], random_state=0)
    pixels = np.round(digits.images * 255.0 / 16.0).reshape(len(labels), -1) / 255.0
    expected = SVC().fit(pixels[fit], labels[fit]).score(pixels[test], labels[test])
    assert abs(metrics["svc_test_accuracy"] - expected) <= 1e-9
    assert "fitted on train as the ViT" in out


def test_fit_splits_folds_validation_into_training():
    import tensorflow as tf

    from pipelines.data import DatasetInfo
    from pipelines.data.info import SourceSplits
    from pipelines.training.data_loading import fit_splits

    def split(values):
        return tf.data.Dataset.from_tensor_slices((np.array(values, "float32"),
                                                   np.array(values, "int32")))

    info = DatasetInfo("toy", (1,), 10, list("0123456789"), 3, 2, 1)
    splits = SourceSplits(split([0, 1, 2]), split([7, 8]), split([9]), info, False)
    assert fit_splits(splits, "train") is splits
    merged = fit_splits(splits, "train+validation")
    assert [int(y) for _, y in merged.train] == [0, 1, 2, 7, 8]
    assert [int(y) for _, y in merged.validation] == [7, 8]
    assert (merged.info.num_train, merged.info.num_validation, merged.info.num_test) == (5, 2, 1)
    with pytest.raises(ValueError, match="--fit-on.*'test'"):
        fit_splits(splits, "test")


def test_fit_on_defaults_and_checks():
    from pipelines.data import DatasetInfo
    from pipelines.training.config import check_config
    from pipelines.training.distributed_job import fitting_on_train

    assert TrainConfig().resolved().fit_on == "train+validation"  # the digits preset
    info = DatasetInfo("scans", (28, 28, 1), 10, list("0123456789"), 4596, 576, 1080)
    assert TrainConfig(dataset="path/to/scans").resolved(info).fit_on == "train"
    assert TrainConfig(fit_on="train").resolved().fit_on == "train"  # a flag wins
    with pytest.raises(ValueError, match="--fit-on must be one of .* received 'all'"):
        check_config(TrainConfig(fit_on="all").resolved())
    # The custom loop (multi-worker, TPU, TFRecords) validates every epoch: a preset's
    # train+validation falls back to train, an explicit request is refused.
    requested = TrainConfig(distribute="multi_worker")
    assert fitting_on_train(requested, requested.resolved()).fit_on == "train"
    requested = TrainConfig(distribute="multi_worker", fit_on="train+validation")
    with pytest.raises(ValueError, match="--fit-on train\\+validation is not supported"):
        fitting_on_train(requested, requested.resolved())


# -------------------------------------------------------------------- --help


@pytest.mark.slow
def test_help_of_the_console_script_and_the_module():
    env = subprocess_env()
    script = VENV_BIN / "keras-vit"
    assert script.exists(), script
    commands = [[str(script), "train", "--help"],
                [sys.executable, "-m", "pipelines.train", "--help"]]
    # Both at once: each spends its time importing TensorFlow.
    processes = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for command, process, (out, err) in zip(commands, processes, outputs):
        assert process.returncode == 0, (command, err[-2000:])
        for option in ("--precision", "--xla", "--no-xla", "--epochs", "--dataset",
                       "--output-dir", "--export-dir", "--data-dir", "--variant",
                       "--deterministic", "--label-smoothing"):
            assert option in out, (command, option)
        for choice in ("mixed_float16", "mixed_bfloat16", "digits"):
            assert choice in out, (command, choice)
        assert "usage: keras-vit train" in out


# ------------------------------------------------------------------- resume


@pytest.mark.slow
def test_killed_run_resumes_instead_of_restarting(tmp_path, digits_data_dir):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "pipelines.train", *tiny_flags(batch_size=32),
               "--epochs", "4", "--no-export", "--no-baseline", "--data-dir", digits_data_dir,
               "--output-dir", str(run_dir), "--export-dir", str(tmp_path / "savedmodels")]
    env = subprocess_env()
    history = run_dir / "history.csv"

    backup_metadata = run_dir / "backup" / "training_metadata.json"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 400
        try:
            # Killed once an epoch is finished and backed up (the backup is the last
            # thing written at an epoch end).
            while not backup_metadata.exists():
                assert first.poll() is None, (
                    "the first run ended before any epoch was backed up:\n"
                    + (tmp_path / "first.log").read_text()[-3000:])
                assert time.monotonic() < deadline, "no epoch backed up within the timeout"
                time.sleep(0.2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    backed_up = json.loads(backup_metadata.read_text())["epoch"]  # epochs finished
    assert 1 <= backed_up < 4, "the first run was not interrupted mid-training"
    rows_before = read_history(history)[:backed_up]
    assert [int(r["epoch"]) for r in rows_before] == list(range(backed_up))
    assert not (run_dir / "metrics.json").exists()

    # Other model/data options: refused before any weight is loaded, nothing touched.
    interrupted = checksums(run_dir)
    changed = [a for a in command[3:]]
    changed[changed.index("--depth") + 1] = "2"
    changed[changed.index("--epochs") + 1] = "5"
    code, _, err = run_main(changed)
    assert code == 2
    line = one_error_line(err)
    assert f"cannot resume the interrupted run in {run_dir}" in line
    assert "--depth 2 (run: 1)" in line and "--epochs 5 (run: 4)" in line
    assert "--restart" in line and "--batch-size" not in line
    assert checksums(run_dir) == interrupted and not moved_aside(run_dir)

    # --restart on a copy: the killed run moves aside as it was, a new one starts.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    restarted = [a if a != str(run_dir) else str(copy) for a in changed]
    restarted[restarted.index("--epochs") + 1] = "1"
    code, out, err = run_main(restarted + ["--restart"])
    assert code == 0, err
    (old,) = moved_aside(copy)
    assert checksums(old) == interrupted
    assert json.loads((copy / "metrics.json").read_text())["resumed"] is False
    assert [int(r["epoch"]) for r in read_history(copy / "history.csv")] == [0]

    second = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=500)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming" in second.stdout.lower(), second.stdout[-3000:]
    # history.json keeps one row per epoch (a kill between an epoch's CSV row and its
    # backup repeats that epoch on resume; the later row wins).
    resumed = json.loads((run_dir / "history.json").read_text())
    assert [int(e) for e in resumed["epoch"]] == [0, 1, 2, 3]
    for row in rows_before:  # epochs finished before the kill are kept, not retrained
        assert resumed["loss"][int(row["epoch"])] == pytest.approx(float(row["loss"]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed"] is True
    assert metrics["epochs_this_run"] == 4 - backed_up
    assert not (run_dir / "backup").exists()
    assert (run_dir / "best.keras").is_file()


# ------------------------------------------ finished run restarted / determinism


def checksums(folder):
    """sha256 of every file under `folder`, by relative path."""
    import hashlib

    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(pathlib.Path(folder).rglob("*")) if path.is_file()}


def moved_aside(run_dir):
    return sorted(pathlib.Path(run_dir).parent.glob(pathlib.Path(run_dir).name + ".old-*"))


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit train: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def rerun(cli_run, tmp_path_factory):
    """The end-to-end run started again with --overwrite, same flags and seed, in a copy
    of its finished folder.

    Export and the SVC baseline come after training, so turning them off here
    changes nothing the deterministic comparison looks at.
    """
    root = tmp_path_factory.mktemp("rerun")
    run_dir = root / "run"
    shutil.copytree(cli_run["run_dir"], run_dir)
    before = read_history(run_dir / "history.csv")
    sums = checksums(run_dir)
    policy = keras.config.dtype_policy()
    try:
        code, out, err = run_main(cli_run["argv"] + [
            "--output-dir", str(run_dir), "--no-export", "--no-baseline", "--overwrite"])
    finally:
        keras.config.set_dtype_policy(policy)
    return dict(code=code, out=out, err=err, run_dir=run_dir, before=before, checksums=sums)


@pytest.mark.slow
def test_tta_shift_too_large_for_the_images_fails_before_anything_is_written(
        tmp_path, digits_data_dir):
    run_dir = tmp_path / "run"
    code, _, err = run_main(["--data-dir", digits_data_dir, "--tta-shift", "4", "--no-export",
                             "--output-dir", str(run_dir)] + tiny_flags())
    assert code == 2
    assert ("--tta-shift 4: views of 8x8 images shifted that far are mostly blank; expected "
            "at most 3") in one_error_line(err)
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_diverged_run_exits_1_with_one_line_and_exports_nothing(tmp_path, digits_data_dir):
    flags = tiny_flags() + ["--epochs", "1"]
    code, _, err = run_main(["--data-dir", digits_data_dir, "--learning-rate", "1e30",
                             "--clipnorm", "1e30", "--tta-shift", "0", "--no-baseline",
                             "--output-dir", str(tmp_path / "run"),
                             "--export-dir", str(tmp_path / "savedmodels")] + flags)
    assert code == 1
    line = one_error_line(err)
    assert "training diverged: the test loss is nan" in line
    assert "Lower --learning-rate (now 1e+30)" in line and "Traceback" not in err
    assert not (tmp_path / "savedmodels").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True])
def test_finished_run_is_refused_without_overwrite(cli_run, tmp_path, digits_data_dir, restart):
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run["run_dir"], run_dir)
    before = checksums(run_dir)
    code, out, err = run_main(cli_run["argv"] + ["--output-dir", str(run_dir)]
                              + (["--restart"] if restart else []))
    assert code == 2
    line = one_error_line(err)
    assert f"{run_dir} holds a finished run" in line
    assert "--output-dir NEW" in line and "--overwrite" in line
    assert ("--restart only starts an interrupted run over" in line) == restart
    assert checksums(run_dir) == before and not moved_aside(run_dir)


@pytest.mark.slow
def test_overwrite_moves_the_finished_run_aside_and_starts_fresh(cli_run, rerun):
    assert rerun["code"] == 0, rerun["err"]
    (old,) = moved_aside(rerun["run_dir"])
    assert checksums(old) == rerun["checksums"]  # the earlier run, byte for byte
    assert f"aside to {old}" in rerun["out"]
    assert [int(r["epoch"]) for r in rerun["before"]] == [0]
    rows = read_history(rerun["run_dir"] / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0]  # a new history, not appended
    metrics = json.loads((rerun["run_dir"] / "metrics.json").read_text())
    assert metrics["resumed"] is False and metrics["epochs_this_run"] == 1
    assert "svc_test_accuracy" not in metrics  # the old metrics.json was not merged
    assert "resum" not in rerun["out"].lower()
    saved = json.loads((rerun["run_dir"] / "run_config.json").read_text())
    assert saved["overwrite"] is True and saved["depth"] == TINY["depth"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["output_dir", "export_dir", "model_name"])
def test_unusable_outputs_fail_at_start_up(cli_run, tmp_path, digits_data_dir, case):
    """Checked before any data is read (the dataset is bogus) and before the old run moves."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run["run_dir"], run_dir)
    before = checksums(run_dir)
    flags = {"output_dir": ["--output-dir", str(blocker / "run")],
             "export_dir": ["--output-dir", str(run_dir), "--overwrite",
                            "--export-dir", str(blocker / "savedmodels")],
             "model_name": ["--output-dir", str(run_dir), "--overwrite",
                            "--model-name", "no spaces/please"]}[case]
    needle = {"output_dir": f"--output-dir {blocker / 'run'} is not writable: {blocker} is a "
                            "file", "export_dir": f"--export-dir {blocker / 'savedmodels'} is "
                            "not writable", "model_name": "'no spaces/please'"}[case]
    code, out, err = run_main(tiny_flags() + ["--epochs", "1", "--dataset", "not_a_dataset",
                                              "--data-dir", digits_data_dir] + flags)
    assert code == 2
    assert needle in one_error_line(err)
    assert checksums(run_dir) == before and not moved_aside(run_dir)
    assert blocker.read_text() == "not a folder"


def test_a_broken_models_config_fails_at_start_up_not_after_training(tmp_path):
    """`--export-dir` holding a models.config that does not parse: refused before any
    data is read (the dataset is bogus), nothing written, the file untouched."""
    models = tmp_path / "savedmodels"
    models.mkdir()
    (models / "models.config").write_text("garbage {{{\n")
    code, out, err = run_main(tiny_flags() + [
        "--epochs", "1", "--dataset", "not_a_dataset", "--data-dir", str(tmp_path / "tfds"),
        "--output-dir", str(tmp_path / "run"), "--export-dir", str(models)])
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"keras-vit train: error: --export-dir {models}: "
                           f"{models / 'models.config'} is not a valid models.config")
    assert 'has no field named "garbage"' in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["models.config", "savedmodels"]
    assert (models / "models.config").read_text() == "garbage {{{\n"


def test_debug_adds_the_traceback(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = tiny_flags() + ["--output-dir", str(blocker / "run")]
    code, _, err = run_main(argv)
    assert code == 2 and "Traceback" not in err
    code, _, err = run_main(argv + ["--debug"])
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("keras-vit train: error: --output-dir")


# --------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("flags, needle", [
    (["--dataset", "not_a_dataset"], "not_a_dataset"),
    (["--variant", "Q/16"], "Q/16"),
    (["--patch-size", "3"], "3"),
    (["--dataset", "EMPTY_FOLDER"], "EMPTY_FOLDER"),
    (["--epochs", "0"], "0"),
    (["--label-smoothing", "1.5"], "1.5"),
], ids=["unknown_dataset", "unknown_variant", "patch_not_dividing", "empty_folder",
        "zero_epochs", "label_smoothing"])
def test_bad_arguments_fail_before_training(tmp_path, digits_data_dir, flags, needle):
    if "EMPTY_FOLDER" in flags:
        empty = tmp_path / "empty_images"
        empty.mkdir()
        flags = [str(empty) if f == "EMPTY_FOLDER" else f for f in flags]
        needle = str(empty)
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    code, out, err = run_main(tiny_flags() + ["--epochs", "1"] + flags + [
        "--data-dir", digits_data_dir, "--output-dir", str(run_dir),
        "--export-dir", str(tmp_path / "savedmodels"), "--no-export"])
    assert code != 0
    assert "error" in err and needle in err, err
    assert needle in err.splitlines()[-1]
    for artefact in ("history.csv", "best.keras", "backup", "metrics.json"):
        assert not (run_dir / artefact).exists(), artefact
    assert not (tmp_path / "savedmodels").exists()
    assert time.perf_counter() - start < 60  # failed before any compile or fit


@pytest.mark.parametrize("flag, value", [("--precision", "float64"), ("--fit-on", "all")])
def test_bad_choices_are_rejected_by_argparse(tmp_path, digits_data_dir, capsys, flag, value):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([flag, value, "--epochs", "1", "--data-dir", digits_data_dir,
              "--output-dir", str(run_dir)])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert value in err and flag in err
    assert not run_dir.exists()


def test_check_config_rejects_a_bad_precision_given_through_the_api(tmp_path, digits_data_dir):
    config = TrainConfig(**TINY, epochs=1, precision="float64", data_dir=digits_data_dir,
                         output_dir=str(tmp_path / "run"), export=False)
    with pytest.raises(ValueError, match="float64"):
        train(config, log=lambda message: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_training_under_a_mirrored_strategy(tmp_path, digits_data_dir):
    """`--distribute mirrored` builds and trains the model under tf.distribute."""
    import tensorflow as tf

    messages = []
    config = TrainConfig(**TINY, epochs=2, batch_size=128, precision="float32", xla=False,
                         distribute="mirrored", data_dir=digits_data_dir,
                         output_dir=str(tmp_path / "run"), export=False, baseline=False,
                         verbose=0)
    metrics = train(config, log=messages.append)
    replicas = tf.distribute.MirroredStrategy().num_replicas_in_sync
    assert any(f"distribution: mirrored ({replicas} replica(s))" in m for m in messages), messages
    assert metrics["epochs_this_run"] == 2
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["loss"][1] < history["loss"][0]  # it learns under the strategy
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_unknown_distribution_strategy_fails_before_training(tmp_path, digits_data_dir):
    config = TrainConfig(**TINY, epochs=1, distribute="parameter_server",
                         data_dir=digits_data_dir, output_dir=str(tmp_path / "run"),
                         export=False)
    with pytest.raises(ValueError, match="parameter_server"):
        train(config, log=lambda message: None)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- precision


def test_choose_precision_explicit_auto_and_unknown():
    for requested in ("float32", "mixed_float16", "mixed_bfloat16"):
        for hardware in (dict(), dict(has_gpu=True), dict(has_gpu=False, has_bf16_cpu=False)):
            policy, reason = choose_precision(requested, **hardware)
            assert policy == requested  # explicit values are returned as they are
            assert isinstance(reason, str) and reason

    # (GPU, AVX-512 BF16 or AMX-BF16, AMX-BF16, XLA) -> policy
    rules = {(True, True, True, True): "mixed_float16", (True, False, False, False): "mixed_float16",
             (False, True, True, False): "mixed_bfloat16", (False, True, True, True): "float32",
             (False, True, False, False): "float32", (False, True, False, True): "float32",
             (False, False, False, False): "float32", (False, False, False, True): "float32"}
    for (gpu, bf16, amx, xla), expected in rules.items():
        policy, reason = choose_precision("auto", has_gpu=gpu, has_bf16_cpu=bf16, has_amx=amx,
                                          xla=xla)
        assert policy == expected, (gpu, bf16, amx, xla)
        assert reason.startswith("auto")
    assert "without AMX" in choose_precision("auto", has_gpu=False, has_bf16_cpu=True,
                                             has_amx=False)[1]
    assert "--no-xla" in choose_precision("auto", has_gpu=False, has_amx=True, xla=True)[1]

    import tensorflow as tf

    gpu, bf16, amx = bool(tf.config.list_physical_devices("GPU")), cpu_has_bf16(), cpu_has_amx_bf16()
    for xla in (True, False):
        policy, reason = choose_precision("auto", xla=xla)
        assert policy == ("mixed_float16" if gpu else rules[(False, bf16, amx, xla)])
        assert policy in PRECISIONS and policy != "auto" and "auto" in reason
        keras.mixed_precision.Policy(policy)  # a valid Keras policy name
    # "auto" and XLA on (every job's --xla default) are the defaults
    assert choose_precision() == choose_precision("auto", xla=True)

    for bad in ("float64", "bfloat16", "AUTO"):
        with pytest.raises(ValueError, match=bad):
            choose_precision(bad)


def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path):
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\n"
    for extra, bf16, amx in (("avx512_bf16", True, False), ("amx_bf16 amx_tile", True, True),
                             ("", False, False), ("avx512_bf16x", False, False)):
        path = tmp_path / f"cpuinfo_{bf16}_{amx}_{len(extra)}"
        path.write_text(flags.format(extra))
        assert cpu_has_bf16(str(path)) is bf16, extra
        assert cpu_has_amx_bf16(str(path)) is amx, extra
    assert cpu_has_bf16(str(tmp_path / "missing")) is False
    assert cpu_has_amx_bf16(str(tmp_path / "missing")) is False


def test_train_module_exposes_a_parser_matching_the_config():
    args = train_module.build_parser().parse_args([])
    assert set(vars(args)) <= {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**vars(args)).resolved()
    assert config.dataset == "digits" and config.precision == "auto" and config.xla is True


# Last, so that `pytest -x` runs everything else first.
@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(cli_run, rerun):
    """Same seed + --deterministic + float32: the same history and test metrics.

    Both runs happen in this process, like two calls of `train(config)`.
    """
    first = json.loads((cli_run["run_dir"] / "metrics.json").read_text())
    second = json.loads((rerun["run_dir"] / "metrics.json").read_text())
    first_rows = read_history(cli_run["run_dir"] / "history.csv")
    second_rows = read_history(rerun["run_dir"] / "history.csv")
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose([float(r[key]) for r in first_rows],
                                   [float(r[key]) for r in second_rows], atol=1e-6,
                                   err_msg=key)
    assert first["test_accuracy"] == pytest.approx(second["test_accuracy"], abs=1e-6)
    assert first["test_loss"] == pytest.approx(second["test_loss"], abs=1e-6)


# ------------------------------------------------ one recipe for train and tune


def test_tuned_trial_compiles_like_the_training_job(tmp_path, digits_data_dir):
    """A hypermodel fixed to the job's hyperparameters compiles the job's model the same way."""
    import keras_tuner as kt

    from pipelines.data import load_datasets
    from pipelines.train import compiled_model, hypermodel_of, model_kwargs

    config = TrainConfig(**TINY, epochs=3, batch_size=100, learning_rate=2e-3,
                         weight_decay=0.03, warmup_fraction=0.2, label_smoothing=0.15,
                         clipnorm=0.7, dropout=0.1, xla=False,
                         data_dir=digits_data_dir).resolved()
    data = load_datasets("digits", batch_size=config.batch_size, data_dir=digits_data_dir,
                         drop_remainder=True)  # as the job reads it
    info = data.info
    steps = int(data.train.cardinality().numpy())
    assert steps == info.num_train // config.batch_size  # 11: the remainder is dropped
    job_model = compiled_model(config, model_kwargs(config, info), steps)
    tuned = hypermodel_of(config, info, jit_compile=False, dtype_policy="float32").build(
        kt.HyperParameters())

    job_optimizer, tuned_optimizer = job_model.optimizer.get_config(), tuned.optimizer.get_config()
    assert type(tuned.optimizer) is type(job_model.optimizer)
    # Keras numbers optimizer names per process (adam_w, adam_w_1): everything else is equal.
    assert {**tuned_optimizer, "name": None} == {**job_optimizer, "name": None}
    assert job_optimizer["learning_rate"]["config"]["decay_steps"] == 3 * steps - int(0.2 * 3 * steps)
    assert job_optimizer["clipnorm"] == pytest.approx(0.7)
    assert tuned.loss.get_config() == job_model.loss.get_config()
    assert type(tuned.loss) is type(job_model.loss)
    assert tuned.count_params() == job_model.count_params() == tiny_parameters()

    # Same weights, same inputs: the same loss and accuracy from both compiled models.
    tuned.set_weights(job_model.get_weights())
    images, labels = next(iter(data.test))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(labels), 10)).astype("float32")
    assert float(tuned.loss(labels, logits)) == pytest.approx(float(job_model.loss(labels, logits)))
    job_scores = job_model.evaluate(images, labels, verbose=0, return_dict=True)
    tuned_scores = tuned.evaluate(images, labels, verbose=0, return_dict=True)
    assert set(job_scores) == {"loss", "accuracy"}
    assert tuned_scores == pytest.approx(job_scores)
