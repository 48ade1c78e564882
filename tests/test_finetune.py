"""`keras-vit train --init CHECKPOINT`: fine-tuning tiny checkpoints written by the tests.

The checkpoints are the random tiny ViTs of `tests/checkpoint_fixtures.py`
(width 16, 2 heads, 2 blocks, 4x4 patches, 12x12x3 images, 5 classes) in
Google npz and Hugging Face form; the image folders are written at 10x10, a
size the checkpoint was not made for. XLA off, float32.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_vit.models import load_checkpoint
from pipelines.train import TrainConfig
from pipelines.training.init_checkpoint import with_checkpoint_image_size
from pipelines.training.run_folder import BACKUP, RUN_CONFIG, plan_run_dir
from tests.checkpoint_fixtures import (
    TINY,
    flax_to_timm,
    flax_weights,
    timm_to_hugging_face,
    write_hugging_face_dir,
)
from tests.image_folder_fixtures import write_class_folders
from tests.test_train import run_main

RUNTIME = ["--precision", "float32", "--no-xla", "--verbose", "0", "--epochs", "1",
           "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("restore_dtype_policy")


@pytest.fixture(scope="module")
def npz_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vit_tiny.npz"
    np.savez(path, **flax_weights(seed=0))
    return path


@pytest.fixture(scope="module")
def hugging_face_checkpoint(tmp_path_factory):
    tensors = timm_to_hugging_face(flax_to_timm(flax_weights(seed=1)))
    return write_hugging_face_dir(tmp_path_factory.mktemp("hf") / "vit-tiny", tensors)


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "pets"
    write_class_folders(root, 8, size=(10, 10))
    return root


def weights_by_path(model):
    return {weight.path: keras.ops.convert_to_numpy(weight) for weight in model.weights}


def is_head(path):
    return path.split("/")[0] in ("head", "head_distillation")


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_frozen_backbone_fine_tune_trains_the_head_and_exports(tmp_path, npz_checkpoint,
                                                              rgb_folder):
    run_dir, export_dir = tmp_path / "run", tmp_path / "savedmodels"
    code, out, err = run_main(RUNTIME + [
        "--init", str(npz_checkpoint), "--dataset", str(rgb_folder), "--image-size", "16,8",
        "--freeze-backbone", "--learning-rate", "0.05", "--output-dir", str(run_dir),
        "--export-dir", str(export_dir), "--model-name", "vit_finetuned"])
    assert code == 0, err
    assert f"from {npz_checkpoint}" in out

    metrics = json.loads((run_dir / "metrics.json").read_text())
    reference = load_checkpoint(str(npz_checkpoint), image_shape=(16, 8, 3), num_classes=3)
    assert metrics["init"] == str(npz_checkpoint)
    assert metrics["parameters"] == reference.count_params()
    assert metrics["trainable_parameters"] == TINY["width"] * 3 + 3  # the new head only
    saved = json.loads((run_dir / RUN_CONFIG).read_text())
    assert (saved["init"], saved["freeze_backbone"], saved["image_size"]) == (
        str(npz_checkpoint), True, [16, 8])
    assert (export_dir / "vit_finetuned" / "1" / "saved_model.pb").exists()
    assert metrics["export"] == str(export_dir / "vit_finetuned" / "1")

    best = keras.saving.load_model(run_dir / "best.keras")
    assert tuple(best.input_shape) == (None, 16, 8, 3)
    trained, loaded = weights_by_path(best), weights_by_path(reference)
    assert trained.keys() == loaded.keys()
    # The patch embedding is the checkpoint's own kernel (Flax (kh, kw, C, D) layout).
    kernels = [path for path in trained if path.endswith("projection/kernel")]
    assert len(kernels) == 1
    np.testing.assert_array_equal(trained[kernels[0]],
                                  np.load(npz_checkpoint)["embedding/kernel"])
    for path, value in loaded.items():
        if is_head(path):
            # Zero-initialised (3 classes, not the checkpoint's 5), then trained.
            assert not value.any() and np.abs(trained[path]).max() > 0, path
        else:  # frozen: exactly the checkpoint (position table resampled to 4x2)
            np.testing.assert_array_equal(trained[path], value, err_msg=path)


@pytest.mark.slow
def test_full_fine_tune_from_a_hugging_face_folder_starts_from_its_weights(
        tmp_path, hugging_face_checkpoint, tmp_path_factory):
    """All weights trainable; a vanishing learning rate shows where training started.

    Five classes like the checkpoint, so its head is kept; no --image-size, so
    the 10x10 images are resized to the checkpoint's 12x12.
    """
    folder = tmp_path_factory.mktemp("data5") / "five"
    write_class_folders(folder, 6, size=(10, 10), classes=tuple("abcde"))
    run_dir = tmp_path / "run"
    code, _, err = run_main(RUNTIME + [
        "--init", str(hugging_face_checkpoint), "--dataset", str(folder),
        "--learning-rate", "1e-9", "--weight-decay", "0", "--no-export", "--no-baseline",
        "--output-dir", str(run_dir)])
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == metrics["parameters"]
    assert metrics["config"]["image_size"] == [12, 12]
    assert "converted to 12x12" in metrics["conversions"]

    reference = load_checkpoint(str(hugging_face_checkpoint), num_classes=5)
    trained = weights_by_path(keras.saving.load_model(run_dir / "best.keras"))
    loaded = weights_by_path(reference)
    assert trained.keys() == loaded.keys()
    for path, value in loaded.items():
        np.testing.assert_allclose(trained[path], value, atol=1e-6, err_msg=path)
    heads = [value for path, value in loaded.items() if is_head(path)]
    assert heads and all(np.abs(value).max() > 0 for value in heads)  # the checkpoint's head


# ------------------------------------------------------------- refused early


@pytest.fixture(scope="module")
def timm_without_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("timm") / "vit.safetensors"
    save_file(flax_to_timm(flax_weights(seed=2)), str(path))
    return path


@pytest.mark.parametrize("case", [
    "missing_checkpoint", "architecture_flags", "freeze_without_init", "size_not_divisible",
    "grey_data_rgb_checkpoint", "contradicting_heads", "no_normalisation"])
def test_bad_init_fails_in_one_line_and_writes_nothing(
        tmp_path, case, npz_checkpoint, rgb_folder, timm_without_config, digits_data_dir):
    init = ["--init", str(npz_checkpoint)]
    flags, needle = {
        "missing_checkpoint": (["--init", str(tmp_path / "nope.npz")], "nope.npz"),
        "architecture_flags": (init + ["--depth", "2", "--pooling", "gap"],
                               "drop --depth 2, --pooling gap"),
        "freeze_without_init": (["--freeze-backbone"], "needs --init"),
        "size_not_divisible": (init + ["--image-size", "10,10"], "10"),
        "grey_data_rgb_checkpoint": (init + ["--dataset", "digits", "--data-dir",
                                             digits_data_dir, "--image-size", "8,8"],
                                     "3-channel"),
        "contradicting_heads": (init + ["--num-heads", "4"], "num_heads=4"),
        "no_normalisation": (["--init", str(timm_without_config), "--num-heads", "2"],
                             "no input normalisation"),
    }[case]
    if "--dataset" not in flags:
        flags += ["--dataset", str(rgb_folder)]
    run_dir, export_dir = tmp_path / "run", tmp_path / "savedmodels"
    code, _, err = run_main(RUNTIME + flags + ["--output-dir", str(run_dir),
                                                 "--export-dir", str(export_dir)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit train: error: "), err
    assert needle in lines[0]
    assert not run_dir.exists() and not export_dir.exists()


# -------------------------------------------------------------- config level


def test_init_leaves_the_architecture_to_the_checkpoint_and_takes_its_size(npz_checkpoint):
    config = TrainConfig(init=str(npz_checkpoint), dataset="digits").resolved()
    for name in ("variant", "hidden_dim", "depth", "num_heads", "mlp_dim", "pooling",
                 "position_embedding"):
        assert getattr(config, name) is None, name
    assert config.epochs == 90 and config.learning_rate == 3e-3  # the schedule preset stays
    assert with_checkpoint_image_size(config).image_size == (TINY["image"], TINY["image"])
    sized = dataclasses.replace(config, image_size=(16, 8))
    assert with_checkpoint_image_size(sized).image_size == (16, 8)
    plain = TrainConfig(dataset="digits").resolved()
    assert plain.num_heads == 4 and plain.position_embedding == "learned"


def test_an_interrupted_run_resumes_only_from_the_same_checkpoint(tmp_path, npz_checkpoint,
                                                                  hugging_face_checkpoint):
    run_dir = tmp_path / "run"
    (run_dir / BACKUP).mkdir(parents=True)  # what a killed run leaves
    started = TrainConfig(init=str(npz_checkpoint), output_dir=str(run_dir)).resolved()
    (run_dir / RUN_CONFIG).write_text(json.dumps(dataclasses.asdict(started)))
    assert plan_run_dir(started) == "resume"
    other = dataclasses.replace(started, init=str(hugging_face_checkpoint))
    with pytest.raises(ValueError, match="--init"):
        plan_run_dir(other)
    with pytest.raises(ValueError, match="--freeze-backbone"):
        plan_run_dir(dataclasses.replace(started, freeze_backbone=True))


def test_an_interrupted_run_of_the_other_task_is_named_as_such(tmp_path):
    from pipelines.sequence.config import SequenceConfig

    run_dir = tmp_path / "run"
    (run_dir / BACKUP).mkdir(parents=True)
    sequence_run = SequenceConfig(output_dir=str(run_dir)).resolved()
    (run_dir / RUN_CONFIG).write_text(json.dumps(dataclasses.asdict(sequence_run)))
    classify = TrainConfig(dataset="digits", output_dir=str(run_dir)).resolved()
    with pytest.raises(ValueError, match=r"holds an interrupted --task sequence run and this "
                                         r"is --task classify"):
        plan_run_dir(classify)
