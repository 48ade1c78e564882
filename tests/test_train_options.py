"""End-to-end tests of `keras-vit train` options no other job test passes.

* `--tta-shift N`: `keras_vit.models.shift_averaged` against a numpy reference
  (every zero-filled shift of up to N pixels, made here, run through the model
  one view at a time, class probabilities averaged); then a job with
  `--tta-shift 1` whose reported test accuracy/loss and exported SavedModel
  probabilities are recomputed from its saved `best.keras` with that reference.
* XLA and `--precision auto`, the defaults: that same job runs without
  `--no-xla` or `--precision`, through `python -m pipelines.cli train` as
  `keras-vit train` does; it trains (loss falls) and its records (log,
  metrics.json, run_config.json, best.keras's compile config) say XLA was on
  and give the precision `choose_precision` picks under XLA.
* `--offline`: that same job runs with `--offline` on the prepared
  `digits_data_dir`, in a process with no network at all (`unshare -rn`).
* `--precision mixed_bfloat16` / `mixed_float16`: one tiny job each; the
  recorded precision, the saved layers' dtype policy, float32 logits, finite
  accuracy and loss.
* Model and optimiser flags carried into the saved model: `--pooling` (token,
  gap), `--position-embedding` (sincos2d, learned), `--attention-dropout`,
  `--drop-path` (rising linearly over the blocks), `--warmup-fraction` and
  `--clipnorm` (the optimizer and schedule of `best.keras`, checked against
  the step count of the run), each split across the two precision jobs.

Tiny models on the embedded digits set (`TINY` of tests/test_train.py); the
precision jobs run in-process with XLA off and no export.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest
from test_train import REPO, TINY, run_main, subprocess_env, tiny_flags

from pipelines.precision import choose_precision

pytestmark = pytest.mark.usefixtures("restore_dtype_policy")

BATCH = 128
TRAIN_AND_VALIDATION = 1149 + 288  # the digits preset fits on train+validation
STEPS_PER_EPOCH = TRAIN_AND_VALIDATION // BATCH  # the training split drops its remainder
NUM_CLASSES = 10
LABEL_SMOOTHING = 0.1  # the recipe's default, which these jobs keep


# ------------------------------------------------------------------ references


def shifted(images, dy, dx):
    """View of `images` (B, H, W, C) holding pixel (i + dy, j + dx) at (i, j), zeros outside."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    rows_to, rows_from = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0),
                                                                       height + min(dy, 0))
    cols_to, cols_from = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0),
                                                                      width + min(dx, 0))
    out[:, rows_to, cols_to] = images[:, rows_from, cols_from]
    return out


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def logits_of(model, images):
    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)))


def reference_views_logits(model, images, max_shift):
    """`(V, B, K)` logits of each shifted view, row-major from (-s, -s), one call per view."""
    return np.stack([logits_of(model, shifted(images, dy, dx))
                     for dy in range(-max_shift, max_shift + 1)
                     for dx in range(-max_shift, max_shift + 1)])


def reference_views_probabilities(model, images, max_shift):
    """`(V, B, K)` class probabilities of each shifted view."""
    return softmax(reference_views_logits(model, images, max_shift))


def smoothed_crossentropy(log_probabilities, labels, smoothing=LABEL_SMOOTHING):
    """Mean label-smoothed cross-entropy of normalised log-probabilities, in numpy."""
    k = log_probabilities.shape[-1]
    target = np.full(log_probabilities.shape, smoothing / k)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    return float(np.mean(-np.sum(target * log_probabilities, axis=-1)))


def vit_parameters(depth, pooling, position_embedding, d=TINY["hidden_dim"], m=TINY["mlp_dim"],
                   patch=2, image=(8, 8, 1), classes=NUM_CLASSES):
    """Parameters of a pre-norm ViT with these options, counted by hand."""
    patches = (image[0] // patch) * (image[1] // patch)
    tokens = patches + (pooling == "token")
    block = 2 * d + 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    return (patch * patch * image[2] * d + d  # patch embedding
            + (d if pooling == "token" else 0)  # class token
            + (tokens * d if position_embedding == "learned" else 0)  # sincos2d: fixed
            + depth * block + 2 * d + d * classes + classes)


def digits_test_arrays(data_dir):
    """The digits test split as numpy arrays (what the job scores)."""
    from pipelines.baselines import dataset_to_numpy
    from pipelines.data import load_datasets

    data = load_datasets("digits", data_dir=data_dir, batch_size=BATCH, offline=True)
    return dataset_to_numpy(data.test)


def saved_config(run_dir):
    with zipfile.ZipFile(run_dir / "best.keras") as archive:
        return json.loads(archive.read("config.json"))


def layer_configs(run_dir):
    return {layer["config"]["name"]: layer for layer in saved_config(run_dir)["config"]["layers"]}


# ------------------------------------------------------ shift averaging (unit)


def test_shift_averaged_matches_a_numpy_mean_of_view_probabilities(seeded_keras):
    from keras_vit.models import shift_averaged, vision_transformer

    # Non-square, two channels, 25 views: rows and columns cannot be swapped unnoticed.
    model = vision_transformer("Ti/2", image_shape=(8, 6, 2), num_classes=5, hidden_dim=16,
                               depth=1, num_heads=2, mlp_dim=32, pooling="gap")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 8, 6, 2)).astype("float32")
    tta = shift_averaged(model, max_shift=2)
    output = tta.predict(images, verbose=0)
    assert output.shape == (3, 5) and output.dtype == np.float32

    view_logits = reference_views_logits(model, images, 2)
    views = softmax(view_logits)
    assert views.shape == (25, 3, 5)
    mean_probabilities = views.mean(axis=0)
    # Log-probabilities of the mean probability: valid logits whose softmax is that mean.
    np.testing.assert_allclose(output, np.log(mean_probabilities), rtol=0, atol=2e-5)
    np.testing.assert_allclose(softmax(output), mean_probabilities, rtol=0, atol=2e-6)
    # The reference discriminates: neither one view nor the mean of logits gives it.
    single = np.log(softmax(logits_of(model, images)))
    assert np.abs(output - single).max() > 1e-3
    assert np.abs(output - np.log(softmax(view_logits.mean(axis=0)))).max() > 1e-4


# ------------------------------------ one job: --tta-shift 1, XLA on, --offline


def network_cut():
    """`unshare -rn` when this machine can run a process with no network, else None."""
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return ["unshare", "-rn"] if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def tta_xla_job(tmp_path_factory, digits_data_dir):
    """`python -m pipelines.cli train --tta-shift 1 --offline`, XLA left at its default (on).

    Runs with no network when `unshare -rn` works; exports without the
    fresh-process verification (the tests check the SavedModel themselves).
    """
    root = tmp_path_factory.mktemp("tta_xla")
    run_dir, export_dir = root / "run", root / "savedmodels"
    flags = tiny_flags(BATCH)
    at = flags.index("--precision")
    flags = [flag for flag in flags[:at] + flags[at + 2:] if flag != "--no-xla"]
    flags += ["--epochs", "12", "--seed", "1", "--tta-shift", "1", "--offline",
              "--data-dir", digits_data_dir, "--output-dir", str(run_dir),
              "--export-dir", str(export_dir), "--no-verify-export", "--no-baseline"]
    assert not any(flag.endswith("xla") or flag == "--precision" for flag in flags)  # defaults
    cut = network_cut()
    command = (cut or []) + [sys.executable, "-m", "pipelines.cli", "train", *flags]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    return dict(result=result, run_dir=run_dir, export_dir=export_dir, network_cut=cut,
                data_dir=digits_data_dir)


@pytest.fixture(scope="module")
def tta_reference(tta_xla_job):
    """The job's saved model, the test split, and the numpy view probabilities of it."""
    result = tta_xla_job["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = keras.saving.load_model(tta_xla_job["run_dir"] / "best.keras")
    x_test, y_test = digits_test_arrays(tta_xla_job["data_dir"])
    views = reference_views_probabilities(model, x_test, 1)
    return dict(model=model, x_test=x_test, y_test=y_test, views=views,
                metrics=json.loads((tta_xla_job["run_dir"] / "metrics.json").read_text()))


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_tta_job_reports_the_accuracy_and_loss_of_the_mean_over_nine_views(tta_xla_job,
                                                                          tta_reference):
    metrics, views, y_test = tta_reference["metrics"], tta_reference["views"], \
        tta_reference["y_test"]
    assert views.shape == (9, 360, NUM_CLASSES)
    mean_probabilities = views.mean(axis=0)
    accuracy = float(np.mean(mean_probabilities.argmax(-1) == y_test))
    assert metrics["tta_shift"] == 1
    assert metrics["test_accuracy"] == accuracy
    assert metrics["test_loss"] == pytest.approx(
        smoothed_crossentropy(np.log(mean_probabilities), y_test), rel=1e-5)
    # The single view, reported beside it, is the unshifted view (the centre one).
    centre = views[4]
    assert metrics["test_accuracy_single_view"] == float(np.mean(centre.argmax(-1) == y_test))
    assert metrics["test_loss_single_view"] == pytest.approx(
        smoothed_crossentropy(np.log(centre), y_test), rel=1e-5)
    # Shift averaging changed the predictions here, so the comparison above can tell.
    assert (mean_probabilities.argmax(-1) != centre.argmax(-1)).any()
    assert "mean of 9 shifted views" in tta_xla_job["result"].stdout


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_tta_job_exports_the_shift_averaged_classifier(tta_xla_job, tta_reference):
    import tensorflow as tf

    metrics = tta_reference["metrics"]
    version_dir = metrics["export"]
    assert os.path.dirname(os.path.dirname(version_dir)) == str(tta_xla_job["export_dir"])
    serving = tf.saved_model.load(version_dir).signatures["serving_default"]
    x_test = tta_reference["x_test"]
    probabilities = serving(images=tf.constant(x_test))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, tta_reference["views"].mean(axis=0),
                               rtol=0, atol=1e-5)
    assert float(np.mean(probabilities.argmax(-1) == tta_reference["y_test"])) == \
        metrics["test_accuracy"]


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_default_xla_job_trains_and_records_xla_on(tta_xla_job):
    result, run_dir = tta_xla_job["result"], tta_xla_job["run_dir"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "XLA: on" in result.stdout
    assert "jit_compile" not in result.stderr  # no "Proceeding with jit_compile=False"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["xla"] is True and metrics["config"]["xla"] is True
    assert json.loads((run_dir / "run_config.json").read_text())["xla"] is True
    assert saved_config(run_dir)["compile_config"]["jit_compile"] is True
    assert metrics["epochs_this_run"] == 12
    # --precision auto under XLA: float32 on every CPU, AMX-BF16 included
    # (pipelines.precision: XLA's bf16 measured slower there).
    assert (metrics["precision"], metrics["precision_reason"]) == \
        choose_precision("auto", xla=True)
    assert metrics["precision"] in ("float32", "mixed_float16")  # mixed_float16: a GPU
    assert f"precision: {metrics['precision']} ({metrics['precision_reason']}); XLA: on" in \
        result.stdout
    for key in ("test_accuracy", "test_accuracy_single_view"):
        assert 0.0 <= metrics[key] <= 1.0
    assert np.isfinite(metrics["test_loss"]) and metrics["train_images_per_second"] > 0
    history = json.loads((run_dir / "history.json").read_text())
    losses = history["loss"]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1, losses
    assert metrics["test_accuracy"] > 0.25  # well above chance (0.1) after 12 epochs (~0.5)


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_offline_job_trains_from_the_prepared_folder_without_a_network(tta_xla_job):
    result, run_dir = tta_xla_job["result"], tta_xla_job["run_dir"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((run_dir / "run_config.json").read_text())
    assert saved["offline"] is True and saved["data_dir"] == tta_xla_job["data_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 1149, "validation": 288, "test": 360}
    assert "download" not in (result.stdout + result.stderr).lower()
    # Where `unshare -rn` is unavailable the job ran with the network reachable;
    # --offline still had to find everything in the prepared folder (no download).


# ------------------------------------------------ precision and model-flag jobs


def in_process_job(root, *flags):
    run_dir = root / "run"
    argv = tiny_flags(BATCH) + ["--no-export", "--no-baseline", "--seed", "2",
                                "--output-dir", str(run_dir), *flags]
    policy = keras.config.dtype_policy()
    try:
        code, out, err = run_main(argv)
    finally:
        keras.config.set_dtype_policy(policy)
    assert code == 0, out[-3000:] + err[-3000:]
    return dict(run_dir=run_dir, out=out,
                metrics=json.loads((run_dir / "metrics.json").read_text()),
                layers=layer_configs(run_dir), compile=saved_config(run_dir)["compile_config"])


# bfloat16: class token, fixed 2-D sin-cos positions, dropouts, 2 blocks, its own schedule.
BF16_FLAGS = ("--precision", "mixed_bfloat16", "--pooling", "token",
              "--position-embedding", "sincos2d", "--attention-dropout", "0.15",
              "--drop-path", "0.2", "--depth", "2", "--warmup-fraction", "0.25",
              "--clipnorm", "0.5", "--epochs", "3")
# float16: average pooling and learned positions given explicitly, no warm-up.
FP16_FLAGS = ("--precision", "mixed_float16", "--pooling", "gap",
              "--position-embedding", "learned", "--warmup-fraction", "0",
              "--clipnorm", "2.5", "--epochs", "2")


@pytest.fixture(scope="module")
def bf16_job(tmp_path_factory, digits_data_dir):
    return in_process_job(tmp_path_factory.mktemp("bf16"), "--data-dir", digits_data_dir,
                          *BF16_FLAGS)


@pytest.fixture(scope="module")
def fp16_job(tmp_path_factory, digits_data_dir):
    return in_process_job(tmp_path_factory.mktemp("fp16"), "--data-dir", digits_data_dir,
                          *FP16_FLAGS)


def load_best(job):
    """`best.keras` of a job, loaded under the job's dtype policy.

    Under mixed_float16 Keras' `compile` wraps the optimizer in a
    `LossScaleOptimizer`, but the compile config keeps the AdamW it was given:
    loaded under float32 the model gets a bare AdamW and skips the saved
    optimizer state (a Keras warning). Under the run's policy it gets both back.
    """
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(job["metrics"]["precision"])
    try:
        return keras.saving.load_model(job["run_dir"] / "best.keras")
    finally:
        keras.config.set_dtype_policy(policy)


def check_precision_job(job, policy, compute_dtype, data_dir):
    metrics = job["metrics"]
    assert metrics["precision"] == policy and metrics["precision_reason"] == "requested"
    assert f"precision: {policy} (requested)" in job["out"]
    assert json.loads((job["run_dir"] / "run_config.json").read_text())["precision"] == policy
    for key in ("test_accuracy", "test_loss", "test_accuracy_single_view"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    history = json.loads((job["run_dir"] / "history.json").read_text())
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["accuracy"]))

    # Under the default float32 policy: the saved layers carry their own policy.
    with warnings.catch_warnings():  # mixed_float16: the optimizer state is skipped (load_best)
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        model = keras.saving.load_model(job["run_dir"] / "best.keras")
    blocks = [layer for layer in model.layers if layer.name.startswith("encoder_block_")]
    assert blocks
    for layer in [model.get_layer("patch_embedding"), *blocks]:
        assert layer.dtype_policy.name == policy, layer.name
        assert layer.compute_dtype == compute_dtype and layer.variable_dtype == "float32"
    assert model.get_layer("head").dtype_policy.name == "float32"
    x_test, y_test = digits_test_arrays(data_dir)
    logits = model.predict(x_test, verbose=0)
    assert logits.dtype == np.float32 and logits.shape == (len(x_test), NUM_CLASSES)
    assert np.all(np.isfinite(logits))
    # The reported single-view accuracy is that of the saved model.
    assert metrics["test_accuracy_single_view"] == pytest.approx(
        float(np.mean(logits.argmax(-1) == y_test)), abs=1.5 / len(y_test))
    return model


def check_schedule(compile_config, model, *, epochs, warmup_fraction, clipnorm, peak):
    """The saved optimizer: AdamW clipping at `clipnorm` on warm-up + cosine over the run."""
    optimizer = compile_config["optimizer"]  # AdamW, also under mixed_float16 (`load_best`)
    assert optimizer["class_name"] == "AdamW"
    assert optimizer["config"]["clipnorm"] == clipnorm
    total = epochs * STEPS_PER_EPOCH
    warmup = int(warmup_fraction * total)
    schedule = optimizer["config"]["learning_rate"]["config"]
    assert schedule["warmup_steps"] == warmup and schedule["warmup_target"] == peak
    assert schedule["decay_steps"] == total - warmup and schedule["initial_learning_rate"] == 0
    # The restored schedule's rates: linear rise to the peak, then a cosine to 0.
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    rate = inner.learning_rate if callable(inner.learning_rate) else inner._learning_rate

    def reference(step):
        if step < warmup:
            return peak * step / warmup
        return peak * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))

    for step in sorted({0, warmup // 2, warmup, (warmup + total) // 2, total}):
        assert float(rate(step)) == pytest.approx(reference(step), rel=1e-5, abs=1e-9), step
    assert int(inner.iterations.numpy()) == total  # the whole run was trained


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_mixed_bfloat16_job_trains_bf16_layers_with_float32_logits(bf16_job, digits_data_dir):
    check_precision_job(bf16_job, "mixed_bfloat16", "bfloat16", digits_data_dir)


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_mixed_float16_job_trains_fp16_layers_with_float32_logits(fp16_job, digits_data_dir):
    check_precision_job(fp16_job, "mixed_float16", "float16", digits_data_dir)
    # float16 gradients need loss scaling: the run trained through a LossScaleOptimizer.
    model = load_best(fp16_job)
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    assert float(model.optimizer.scale_loss(1.0)) > 1.0
    assert int(model.optimizer.inner_optimizer.iterations.numpy()) == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_token_pooling_sincos_dropouts_and_depth_reach_the_saved_model(bf16_job):
    layers, metrics = bf16_job["layers"], bf16_job["metrics"]
    assert layers["pooling"]["config"]["mode"] == "token"
    assert "class_token" in layers
    assert layers["position_embedding"]["class_name"] == "SinCosPositionEncoding2D"
    assert tuple(layers["position_embedding"]["config"]["grid_size"]) == (4, 4)
    blocks = [layers[f"encoder_block_{i}"]["config"] for i in range(2)]
    assert "encoder_block_2" not in layers
    assert [block["attention_dropout"] for block in blocks] == [0.15, 0.15]
    assert [block["dropout"] for block in blocks] == [0.0, 0.0]
    # Stochastic depth rises linearly from 0 at the first block to --drop-path at the last.
    assert [block["drop_path"] for block in blocks] == pytest.approx(
        list(np.linspace(0.0, 0.2, 2)))
    assert metrics["parameters"] == vit_parameters(2, "token", "sincos2d")
    model = load_best(bf16_job)
    block = model.get_layer("encoder_block_1")
    assert block.drop_path_layer.rate == pytest.approx(0.2)
    assert block.attention.dropout == pytest.approx(0.15)
    assert not model.get_layer("position_embedding").weights  # fixed, nothing learned


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_gap_pooling_and_learned_positions_reach_the_saved_model(fp16_job):
    layers = fp16_job["layers"]
    assert layers["pooling"]["config"]["mode"] == "gap"
    assert "class_token" not in layers
    assert layers["position_embedding"]["class_name"] == "PositionEmbedding"
    assert layers["position_embedding"]["config"]["sequence_length"] == 16
    assert fp16_job["metrics"]["parameters"] == vit_parameters(1, "gap", "learned")


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_warmup_fraction_and_clipnorm_shape_the_saved_optimizer(bf16_job, fp16_job):
    for job, flags in ((bf16_job, BF16_FLAGS), (fp16_job, FP16_FLAGS)):
        given = dict(zip(flags[::2], flags[1::2]))
        saved = json.loads((job["run_dir"] / "run_config.json").read_text())
        assert saved["warmup_fraction"] == float(given["--warmup-fraction"])
        assert saved["clipnorm"] == float(given["--clipnorm"])
        model = load_best(job)
        check_schedule(job["compile"], model, epochs=int(given["--epochs"]),
                       warmup_fraction=float(given["--warmup-fraction"]),
                       clipnorm=float(given["--clipnorm"]), peak=saved["learning_rate"])
