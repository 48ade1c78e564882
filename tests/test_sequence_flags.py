"""`keras-vit train --task sequence` flags end to end: the run folder, --offline, the model flags.

One tiny run (32 / 8 / 8 digit strings, 2 steps per epoch, float32, no XLA, no
export) is interrupted with a ^C once its first epoch is written and backed
up, i.e. the folder of a killed run; copies of it are refused and restarted,
the run itself resumes to its end, and a copy of that finished run is refused
and overwritten. The restarted and overwritten runs are stopped by a ^C
before their first step: what the flags decide (the folder moved aside, the
new run's options and model) is settled by then, and two trainings fewer keep
the module short. References: the files of the folders
(sha256 of every file, `history.csv`, `run_config.json`), the model the job
hands to `fit` and the saved `best.keras` read back.

`digit_strings/tiny` is a 32 / 8 / 8 config of the embedded `digit_strings`
builder registered for this module only: `digit_strings/small` takes about
15 s to prepare on 2 cores, the tiny one about 1 s, through the same code.
"""

import dataclasses
import hashlib
import io
import json
import pathlib
import shutil
import socket
from contextlib import redirect_stderr, redirect_stdout

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

TINY = ["--hidden-dim", "32", "--depth", "1", "--num-heads", "2", "--mlp-dim", "64",
        "--decoder-layers", "1", "--batch-size", "16", "--learning-rate", "3e-3",
        "--augmentation", "crop", "--verbose", "0"]
#: Flags of the interrupted run that differ from the defaults, and their values.
RECIPE = {"dropout": 0.2, "weight_decay": 0.02, "warmup_fraction": 0.5,
          "label_smoothing": 0.05, "clipnorm": 0.5, "seed": 5}
TRAIN_SIZE, HELD_OUT_SIZE, BATCH = 32, 8, 16


def run_train(argv):
    from pipelines.training.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["--task", "sequence"] + argv)
    return code, out.getvalue(), err.getvalue()


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit train: error: "), err
    return lines[0]


def checksums(folder):
    """sha256 of every file under `folder`, by relative path."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(pathlib.Path(folder).rglob("*")) if path.is_file()}


def moved_aside(run_dir):
    return sorted(run_dir.parent.glob(run_dir.name + ".old-*"))


def history_epochs(run_dir):
    lines = (run_dir / "history.csv").read_text().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


def with_flag(argv, flag, value):
    """`argv` with `flag`'s value replaced (or the flag appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@dataclasses.dataclass
class NetworkGuard:
    """Every attempt to open a connection or download, refused and recorded."""

    attempts: list

    def refuse(self, *args, **kwargs):
        self.attempts.append(args[:2])
        raise OSError("network use in an --offline test")


def guard_network(patch):
    guard = NetworkGuard([])
    patch.setattr(socket.socket, "connect", guard.refuse)
    patch.setattr(socket, "create_connection", guard.refuse)
    for method in ("download", "download_and_extract"):
        patch.setattr(tfds.download.DownloadManager, method, guard.refuse)
    return guard


def interrupt_at(patch, hook, epoch=None, seen=None):
    """Makes the job's epoch timer press ^C at `hook` (`"epoch"` N's begin, or `"train"` begin).

    The timer runs after the CSV row and the best checkpoint and before the
    backup of each epoch (`training_callbacks`): at epoch N's begin, epochs
    0..N-1 are written and backed up, as in a run killed then. `seen` gets the
    model `fit` trains.
    """
    from pipelines.training.run_folder import epoch_timer

    def interrupting_timer():
        timer = epoch_timer()
        on_epoch_begin = timer.on_epoch_begin

        def on_train_begin(logs=None):
            if seen is not None:
                seen.append(timer.model)
            if hook == "train":
                raise KeyboardInterrupt

        def epoch_begin(number, logs=None):
            if hook == "epoch" and number == epoch:
                raise KeyboardInterrupt
            on_epoch_begin(number, logs)

        timer.on_train_begin, timer.on_epoch_begin = on_train_begin, epoch_begin
        return timer

    patch.setattr("pipelines.sequence.fit.epoch_timer", interrupting_timer)


pytestmark = pytest.mark.usefixtures("restore_dtype_policy")


@pytest.fixture(scope="module")
def tiny_dataset():
    from pipelines.data.digit_strings import DigitStrings, DigitStringsConfig

    config = DigitStringsConfig(name="tiny", description="32 / 8 / 8 strings (tests).",
                                train_size=TRAIN_SIZE, validation_size=HELD_OUT_SIZE,
                                test_size=HELD_OUT_SIZE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DigitStrings.builder_configs, "tiny", config)
        yield "digit_strings/tiny"


@pytest.fixture(scope="module")
def interrupted(tiny_dataset, tmp_path_factory):
    """A 2-epoch run, offline on an empty data dir, interrupted when epoch 1 begins.

    Returns its argv, the untouched copy `pristine` with its checksums, the
    data dir it prepared and the network attempts made meanwhile.
    """
    root = tmp_path_factory.mktemp("sequence_flags")
    data_dir, run_dir = root / "tfds", root / "run"
    argv = TINY + ["--dataset", tiny_dataset, "--data-dir", str(data_dir), "--offline",
                   "--epochs", "2", "--no-export", "--export-dir", str(root / "exports"),
                   "--output-dir", str(run_dir), "--tta-shift", "0", "--fit-on", "train"]
    for name, value in RECIPE.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    with pytest.MonkeyPatch.context() as patch:
        guard = guard_network(patch)
        interrupt_at(patch, "epoch", epoch=1)
        code, out, err = run_train(argv)
    pristine = root / "pristine"
    shutil.copytree(run_dir, pristine)
    return {"argv": argv, "run_dir": run_dir, "pristine": pristine, "root": root,
            "checksums": checksums(pristine), "data_dir": data_dir, "code": code, "out": out,
            "err": err, "network": guard.attempts}


def copy_of(interrupted, tmp_path, name="run"):
    folder = tmp_path / name
    shutil.copytree(interrupted["pristine"], folder)
    return folder


@pytest.mark.slow
def test_interrupted_run_keeps_its_backed_up_epoch_and_says_how_to_resume(interrupted):
    assert interrupted["code"] == 130, interrupted["err"][-3000:]
    assert "run the same command again to resume" in interrupted["err"]
    pristine = interrupted["pristine"]
    assert (pristine / "backup").is_dir() and not (pristine / "metrics.json").exists()
    assert history_epochs(pristine) == [0]
    assert (pristine / "best.weights.h5").is_file() and (pristine / "vocab.json").is_file()
    assert not (interrupted["root"] / "exports").exists()  # --no-export


@pytest.mark.slow
def test_offline_prepares_the_embedded_dataset_in_data_dir_without_network(interrupted):
    assert interrupted["network"] == []
    prepared = interrupted["data_dir"] / "digit_strings" / "tiny" / "1.0.0"
    assert (prepared / "dataset_info.json").is_file()
    assert len(list(prepared.glob("digit_strings-*.tfrecord-*"))) >= 3  # one per split
    assert (f"dataset digit_strings: {TRAIN_SIZE} train / {HELD_OUT_SIZE} validation / "
            f"{HELD_OUT_SIZE} test images of shape (16, 64, 1)") in interrupted["out"]
    saved = json.loads((interrupted["pristine"] / "run_config.json").read_text())
    assert saved["offline"] is True and saved["data_dir"] == str(interrupted["data_dir"])


@pytest.mark.slow
def test_offline_refuses_a_dataset_that_needs_a_download(tmp_path):
    data_dir, run_dir = tmp_path / "tfds", tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        guard = guard_network(patch)
        code, _, err = run_train(TINY + ["--dataset", "mnist", "--data-dir", str(data_dir),
                                         "--offline", "--output-dir", str(run_dir)])
    assert code == 2
    line = one_error_line(err)
    assert f"source 'mnist' is not prepared in {data_dir}" in line
    assert "--offline (offline=True) forbids downloading it" in line
    assert guard.attempts == [] and not run_dir.exists()
    assert not any(path.is_file() for path in data_dir.rglob("*"))  # nothing fetched


@pytest.mark.slow
def test_changed_options_or_data_are_refused_without_restart(interrupted, tmp_path):
    run_dir = copy_of(interrupted, tmp_path)
    argv = with_flag(interrupted["argv"], "--output-dir", str(run_dir))
    changed = with_flag(with_flag(with_flag(argv, "--depth", "2"), "--dropout", "0.3"),
                        "--augmentation", "affine")
    code, _, err = run_train(changed)
    assert code == 2
    line = one_error_line(err)
    assert f"cannot resume the interrupted run in {run_dir}" in line
    assert "--depth 2 (run: 1)" in line and "--dropout 0.3 (run: 0.2)" in line
    assert "--augmentation 'affine' (run: 'crop')" in line
    assert "--restart" in line and "--seed" not in line
    assert checksums(run_dir) == interrupted["checksums"] and not moved_aside(run_dir)

    # The same options, but data that now gives another vocabulary than the run's.
    vocab = run_dir / "vocab.json"
    saved = json.loads(vocab.read_text())
    saved["characters"] = saved["characters"][:-1] + ["x"]
    vocab.write_text(json.dumps(saved))
    before = checksums(run_dir)
    code, _, err = run_train(argv)
    assert code == 2
    line = one_error_line(err)
    assert "its vocabulary '012345678x'" in line and "the data's '0123456789'" in line
    assert "--restart" in line
    assert checksums(run_dir) == before and not moved_aside(run_dir)


@pytest.fixture(scope="module")
def restarted(interrupted, tmp_path_factory):
    """A copy of the killed run started again with --restart and another depth; ^C before
    its first step (the model fit got is kept)."""
    run_dir = copy_of(interrupted, tmp_path_factory.mktemp("restart"))
    argv = with_flag(with_flag(interrupted["argv"], "--output-dir", str(run_dir)),
                     "--depth", "2")
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, "train", seen=seen)
        code, out, err = run_train(argv + ["--restart"])
    return {"run_dir": run_dir, "code": code, "out": out, "err": err,
            "model": seen[0] if seen else None}


@pytest.mark.slow
def test_restart_moves_the_killed_run_aside_and_starts_over(interrupted, restarted):
    assert restarted["code"] == 130, restarted["err"][-3000:]
    run_dir = restarted["run_dir"]
    (old,) = moved_aside(run_dir)
    assert checksums(old) == interrupted["checksums"]  # the killed run, byte for byte
    assert f"aside to {old}" in restarted["out"] and "resum" not in restarted["out"].lower()
    # A new run: its own run_config.json (a resume never rewrites it), an empty history,
    # no backup to resume from, and the model of the new options.
    saved = json.loads((run_dir / "run_config.json").read_text())
    assert (saved["restart"], saved["depth"]) == (True, 2)
    assert (run_dir / "history.csv").read_text() == "" and not (run_dir / "backup").exists()
    blocks = [layer.name for layer in restarted["model"].layers
              if layer.name.startswith("encoder_block")]
    assert blocks == ["encoder_block_0", "encoder_block_1"]


@pytest.fixture(scope="module")
def resumed(interrupted):
    """The killed run started again with the same command (with the data it loaded)."""
    import pipelines.sequence.data as sequence_data

    load_sequence_data, loaded = sequence_data.load_sequence_data, []

    def recording_loader(*args, **kwargs):
        loaded.append((args, kwargs, load_sequence_data(*args, **kwargs)))
        return loaded[-1][2]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequence_data, "load_sequence_data", recording_loader)
        code, out, err = run_train(interrupted["argv"])
    return {"run_dir": interrupted["run_dir"], "argv": interrupted["argv"], "code": code,
            "out": out, "err": err, "loaded": loaded, "loader": load_sequence_data}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_command(interrupted, resumed):
    assert resumed["code"] == 0, resumed["err"][-3000:]
    run_dir = resumed["run_dir"]
    assert f"resuming the interrupted run in {run_dir}" in resumed["out"]
    assert history_epochs(run_dir) == [0, 1] and not moved_aside(run_dir)
    before = (interrupted["pristine"] / "history.csv").read_text().splitlines()[1]
    assert (run_dir / "history.csv").read_text().splitlines()[1] == before  # kept, not redone
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_this_run"] == 1
    assert metrics["tta_shift"] == 0  # --tta-shift 0: one view (the preset decodes 25)
    assert not (run_dir / "backup").exists() and (run_dir / "best.keras").is_file()
    assert checksums(run_dir)["run_config.json"] == interrupted["checksums"]["run_config.json"]


@pytest.mark.slow
def test_resumed_run_trains_on_the_fresh_strings_of_the_epochs_it_had_left(resumed):
    """Fresh strings (the interrupted run's default) are drawn per batch of the run: the
    resumed run gets epoch 1's batches, those an uninterrupted run would have had."""
    assert resumed["code"] == 0, resumed["err"][-3000:]
    (args, kwargs, data), = resumed["loaded"]
    assert kwargs["train_strings"] == "fresh" and kwargs["epochs"] == 2
    assert kwargs["first_epoch"] == 1  # the backup's epoch
    whole_run = resumed["loader"](*args, **dict(kwargs, first_epoch=0))
    steps = TRAIN_SIZE // BATCH
    assert data.steps_per_epoch == whole_run.steps_per_epoch == steps
    left = [x.numpy() for (x, _), _, _ in data.train]
    every = [x.numpy() for (x, _), _, _ in whole_run.train]
    assert len(left) == steps and len(every) == 2 * steps
    for got, expected in zip(left, every[steps:]):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(left[0], every[0])


def dropout_rates(model):
    """{layer name: rate} of the model's layers with a dropout rate (blocks not opened: their
    attention layers carry the attention dropout, not a flag here)."""
    rates = {}
    for layer in model.layers:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Dropout):
            rates[layer.name] = config["rate"]
        elif "dropout" in config:
            rates[layer.name] = config["dropout"]
    return rates


@pytest.mark.slow
def test_dropout_and_recipe_flags_reach_the_saved_model(resumed):
    assert resumed["code"] == 0, resumed["err"][-3000:]
    model = keras.saving.load_model(resumed["run_dir"] / "best.keras")
    rates = dropout_rates(model)
    assert {"embedding_dropout", "encoder_block_0", "decoder_block_0",
            "target_position"} <= set(rates)
    assert set(rates.values()) == {RECIPE["dropout"]}, rates
    # Dropout is live in training only: two training passes differ, inference ones do not.
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 64, 1)).astype("float32")
    inputs = [images, np.ones((2, 8), "int32")]
    np.testing.assert_array_equal(model(inputs, training=False), model(inputs, training=False))
    assert not np.allclose(model(inputs, training=True), model(inputs, training=True))

    optimizer = model.optimizer.get_config()
    assert optimizer["weight_decay"] == pytest.approx(RECIPE["weight_decay"])
    assert optimizer["clipnorm"] == pytest.approx(RECIPE["clipnorm"])
    schedule = optimizer["learning_rate"]["config"]
    total_steps = 2 * TRAIN_SIZE // BATCH
    assert schedule["warmup_steps"] == int(RECIPE["warmup_fraction"] * total_steps)
    assert schedule["warmup_target"] == pytest.approx(3e-3)
    assert model.loss.label_smoothing == pytest.approx(RECIPE["label_smoothing"])
    saved = json.loads((resumed["run_dir"] / "run_config.json").read_text())
    assert {name: saved[name] for name in RECIPE} == RECIPE


@pytest.fixture(scope="module")
def overwritten(resumed, tmp_path_factory):
    """A copy of the finished (resumed) run, refused, then started with --overwrite and the
    precision/XLA/variant flags; ^C before the first step (the model fit got is kept)."""
    assert resumed["code"] == 0, resumed["err"][-3000:]
    run_dir = tmp_path_factory.mktemp("overwrite") / "run"
    shutil.copytree(resumed["run_dir"], run_dir)
    before = checksums(run_dir)
    argv = with_flag(resumed["argv"], "--output-dir", str(run_dir))
    refused = run_train(argv)
    refused_sums = checksums(run_dir)
    seen = []
    flags = ["--overwrite", "--variant", "Ti/8", "--precision", "mixed_bfloat16", "--xla"]
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, "train", seen=seen)
        code, out, err = run_train(argv + flags)
    return {"run_dir": run_dir, "checksums": before, "refused": refused,
            "refused_checksums": refused_sums, "code": code, "out": out, "err": err,
            "model": seen[0] if seen else None}


@pytest.mark.slow
def test_finished_run_is_refused_without_overwrite(overwritten):
    code, _, err = overwritten["refused"]
    run_dir = overwritten["run_dir"]
    assert code == 2
    line = one_error_line(err)
    assert f"{run_dir} holds a finished run" in line and "--overwrite" in line
    assert overwritten["refused_checksums"] == overwritten["checksums"]


@pytest.mark.slow
def test_overwrite_moves_the_finished_run_aside_and_starts_fresh(overwritten):
    assert overwritten["code"] == 130, overwritten["err"][-3000:]
    run_dir = overwritten["run_dir"]
    (old,) = moved_aside(run_dir)
    assert checksums(old) == overwritten["checksums"]  # the finished run, byte for byte
    assert f"aside to {old}" in overwritten["out"]
    saved = json.loads((run_dir / "run_config.json").read_text())
    assert saved["overwrite"] is True and saved["variant"] == "Ti/8"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "best.keras").exists()
    assert (run_dir / "history.csv").read_text() == ""  # a new history, nothing carried over


@pytest.mark.slow
def test_variant_precision_and_xla_reach_the_model_fit_trains(overwritten):
    assert "precision: mixed_bfloat16 (requested); XLA: on" in overwritten["out"]
    model = overwritten["model"]
    assert model is not None, overwritten["err"][-3000:]
    assert model.get_layer("patch_embedding").patch_size == (8, 8)  # Ti/8, not strips
    assert model.get_layer("encoder_block_0").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("encoder_block_0").compute_dtype == "bfloat16"
    assert model.outputs[0].dtype == "float32"  # logits in float32 under mixed precision
    assert model.jit_compile is True


@pytest.mark.slow
def test_fit_on_train_and_validation_skips_validation_and_keeps_the_last_epoch(
        interrupted, tiny_dataset, tmp_path):
    """Also `--train-strings fixed` (and no augmentation): the job trains on the builder's
    own strings, those of train and validation (the interrupted run, the default,
    composes fresh ones)."""
    import pipelines.sequence.data as sequence_data

    run_dir = tmp_path / "run"
    argv = with_flag(interrupted["argv"], "--output-dir", str(run_dir))
    loaded = []

    def recording_loader(*args, **kwargs):
        loaded.append(load_sequence_data(*args, **kwargs))
        return loaded[-1]

    load_sequence_data = sequence_data.load_sequence_data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequence_data, "load_sequence_data", recording_loader)
        code, out, err = run_train(with_flag(with_flag(argv, "--epochs", "1"), "--fit-on",
                                             "train+validation")
                             + ["--train-strings", "fixed", "--augmentation", "none"])
    assert code == 0, err[-3000:]
    builder = tfds.builder(tiny_dataset, data_dir=str(interrupted["data_dir"]))
    fixed = {image.tobytes() for split in ("train", "validation") for image, _ in
             tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True))}
    trained = np.concatenate([x.numpy() for (x, _), _, _ in loaded[0].train]).astype(np.uint8)
    assert len(trained) == TRAIN_SIZE + HELD_OUT_SIZE - (TRAIN_SIZE + HELD_OUT_SIZE) % BATCH
    assert all(image.tobytes() in fixed for image in trained)
    assert "training strings: new every epoch" not in out
    assert "training strings: new every epoch" in interrupted["out"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit_on"] == "train+validation" and metrics["train_strings"] == "fixed"
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 1 and "val_loss" not in history
    assert not (run_dir / "best.weights.h5").exists() and (run_dir / "best.keras").is_file()
    assert json.loads((run_dir / "run_config.json").read_text())["fit_on"] == "train+validation"


# ----------------------------------------------------- failing before any data is read


@pytest.mark.slow
def test_debug_adds_the_traceback_to_the_error(tmp_path):
    (tmp_path / "empty").mkdir()
    argv = TINY + ["--dataset", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "run")]
    code, _, err = run_train(argv)
    assert code == 2 and "Traceback" not in err
    code, _, debug_err = run_train(argv + ["--debug"])
    assert code == 2 and "Traceback (most recent call last)" in debug_err
    assert debug_err.strip().splitlines()[-1] == one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags, needle", [
    (["--model-name", "no spaces/please"], "--model-name: "),
    (["--image-size", "16,64"], "--image-size is for folder datasets"),
    (["--beam-width", "0"], "--beam-width must be a positive integer; received 0"),
    (["--length-penalty", "-1"], "--length-penalty must be a finite number >= 0"),
    (["--length-penalty", "nan"], "--length-penalty must be a finite number >= 0; received nan"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number > 0; received inf"),
    (["--tta-shift", "-1"], "--tta-shift must be an integer >= 0; received -1"),
    (["--tta-shift", "8"], "--tta-shift 8: views of 16x64 images shifted that far are mostly "
                           "blank; expected at most 7"),
    (["--max-length", "5"], "--train-strings fresh composes strings of up to 5 digits"),
    (["--dropout", "1.5"], "--dropout must be a number in [0, 1); received 1.5"),
    (["--label-smoothing", "1"], "--label-smoothing"),
])
def test_bad_flags_fail_before_the_run_folder_is_touched(resumed, tmp_path, flags, needle):
    run_dir = tmp_path / "run"
    shutil.copytree(resumed["run_dir"], run_dir)
    before = checksums(run_dir)
    argv = with_flag(resumed["argv"], "--output-dir", str(run_dir))
    code, _, err = run_train(argv + ["--export", "--overwrite"] + flags)
    assert code == 2
    assert needle in one_error_line(err)
    assert checksums(run_dir) == before and not moved_aside(run_dir)
