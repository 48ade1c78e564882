"""Start-up checks of the training job (pipelines/training/preflight.py)."""

import collections
import dataclasses
import shutil

import pytest

from pipelines.training import preflight
from pipelines.training.config import TrainConfig

Usage = collections.namedtuple("Usage", "total used free")


def _disk_with_free(free_bytes, seen):
    def disk_usage(path):
        seen.append(path)
        return Usage(10 * 1024**3, 10 * 1024**3 - free_bytes, free_bytes)

    return disk_usage


def test_a_nearly_full_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(10 * 1024**2, seen))
    run_dir = tmp_path / "runs" / "new"
    config = TrainConfig(output_dir=str(run_dir), export_dir=str(tmp_path / "models")).resolved()
    with pytest.raises(ValueError, match=r"^--output-dir .*new: only 10 MiB free on its disk; "
                                         r"expected at least 256 MiB"):
        preflight.check_outputs(config)
    # Asked about the nearest folder that exists, and created nothing.
    assert seen == [str(tmp_path)]
    assert not (tmp_path / "runs").exists()


def test_enough_space_passes_and_the_export_disk_is_checked_too(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(preflight.MIN_FREE_BYTES, seen))
    config = TrainConfig(output_dir=str(tmp_path / "run"),
                         export_dir=str(tmp_path / "models")).resolved()
    preflight.check_outputs(config)
    assert seen == [str(tmp_path), str(tmp_path)]
    monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(preflight.MIN_FREE_BYTES - 1, []))
    with pytest.raises(ValueError, match="--output-dir"):
        preflight.check_outputs(config)


def test_a_broken_models_config_in_the_export_dir_is_refused_before_training(tmp_path):
    """The export at the end of the run rewrites models.config from the one it finds."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "models.config").write_text("garbage {{{\n")
    config = TrainConfig(output_dir=str(tmp_path / "run"), export_dir=str(models)).resolved()
    with pytest.raises(ValueError) as caught:
        preflight.check_outputs(config)
    message = str(caught.value)
    assert message.startswith(f"--export-dir {models}: {models / 'models.config'} is not a "
                              "valid models.config")
    assert 'has no field named "garbage"' in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["models", "models.config"]
    assert (models / "models.config").read_text() == "garbage {{{\n"
    # Not checked when the run does not export; a valid file passes.
    preflight.check_outputs(dataclasses.replace(config, export=False))
    (models / "models.config").write_text("model_config_list {}\n")
    preflight.check_outputs(config)
