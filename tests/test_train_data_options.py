"""The data options of the jobs on image folders: `--on-bad-image`, split folders, reports.

Tiny ViTs on tiny PNG folders the tests write; XLA off, float32, no export.
"""

import json
import logging

import pytest
from PIL import Image

from pipelines.tuning import cli as tune_cli
from tests.image_folder_fixtures import write_class_folders, write_corrupt_png
from tests.test_train import run_main, tiny_flags

PER_CLASS = 10


pytestmark = pytest.mark.usefixtures("restore_dtype_policy")


@pytest.fixture()
def folder_with_a_corrupt_file(tmp_path):
    root = tmp_path / "pets"
    write_class_folders(root, PER_CLASS)
    bad = write_corrupt_png(root / "dog" / "broken.png")
    return root, bad


def job_flags(tmp_path, dataset, *extra):
    return tiny_flags(batch_size=4) + [
        "--dataset", str(dataset), "--epochs", "1", "--no-export",
        "--output-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "savedmodels"),
        *extra]


def test_a_corrupt_image_fails_in_one_line_and_writes_nothing(tmp_path,
                                                              folder_with_a_corrupt_file):
    root, _ = folder_with_a_corrupt_file
    code, _, err = run_main(job_flags(tmp_path, root))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-vit train: error: ")
    assert "dog/broken.png" in lines[0] and "--on-bad-image skip" in lines[0]
    assert not (tmp_path / "run").exists()  # no run folder with an empty history
    assert not (tmp_path / "savedmodels").exists()


@pytest.mark.slow
def test_skip_trains_without_the_corrupt_image_and_reports_it_once(
        tmp_path, folder_with_a_corrupt_file, caplog):
    root, bad = folder_with_a_corrupt_file
    with caplog.at_level(logging.INFO, logger="pipelines.data"):
        code, out, err = run_main(job_flags(tmp_path, root, "--on-bad-image", "skip"))
    assert code == 0, err
    # Reported once, in the job's log, although the SVC baseline reads the folder a
    # second time: no record of either read reaches the logging handlers.
    assert (out + err).count("broken.png") == 1, out + err
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "warning: " in out and "skipping 1 of 31 image files" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_files"] == [str(bad)]
    assert sum(metrics["split_sizes"].values()) == 3 * PER_CLASS
    assert "svc_test_accuracy" in metrics
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["on_bad_image"] == "skip"


@pytest.mark.slow
def test_given_train_and_test_folders_are_used_and_reported(tmp_path):
    root = tmp_path / "split_pets"
    write_class_folders(root / "train", PER_CLASS)
    write_class_folders(root / "test", 3, seed=1)
    # One training image of another size: decoded to the common 8x8, and said so.
    Image.new("RGB", (12, 10)).save(root / "train" / "cat" / "big.png")
    code, out, err = run_main(job_flags(tmp_path, root, "--no-baseline"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # validation: round(0.2 * 11) = 2 cat images, 2 of each other class, carved from train/.
    assert metrics["split_sizes"] == {"train": 3 * PER_CLASS + 1 - 6, "validation": 6,
                                      "test": 9}
    assert metrics["split_origins"]["train"] == "train/"
    assert metrics["split_origins"]["test"] == "test/"
    assert metrics["split_origins"]["validation"].startswith("carved from train/")
    assert "splits: train: train/; validation: carved from train/" in out
    assert "; test: test/" in out
    conversions = [line for line in out.splitlines() if "converted to 8x8" in line]
    assert conversions == [metrics["conversions"]], out
    assert "1 of 40 images" in conversions[0] and "10x12: 1" in conversions[0]


def tune_flags(tmp_path, dataset, *extra):
    return ["--dataset", str(dataset), "--max-trials", "1", "--epochs", "1",
            "--space", "depth=1", "--space", "hidden_dim=16", "--space", "num_heads=2",
            "--space", "mlp_ratio=2", "--space", "patch_size=2", "--space", "batch_size=8",
            "--precision", "float32", "--no-xla", "--no-export", "--verbose", "0",
            "--output-dir", str(tmp_path / "tune"), *extra]


def test_tune_refuses_a_corrupt_image_by_default(tmp_path, folder_with_a_corrupt_file, capsys):
    root, _ = folder_with_a_corrupt_file
    assert tune_cli.main(tune_flags(tmp_path, root)) == 2
    err = capsys.readouterr().err
    assert "keras-vit tune: error: " in err and "dog/broken.png" in err
    assert not (tmp_path / "tune" / "search" / "summary.json").exists()


@pytest.mark.slow
def test_tune_skips_a_corrupt_image_when_told(tmp_path, folder_with_a_corrupt_file, capsys):
    root, _ = folder_with_a_corrupt_file
    assert tune_cli.main(tune_flags(tmp_path, root, "--on-bad-image", "skip")) == 0, \
        capsys.readouterr().err[-3000:]
    summary = json.loads((tmp_path / "tune" / "search" / "summary.json").read_text())
    assert summary["config"]["on_bad_image"] == "skip"
    assert summary["completed_trials"] == 1
