"""Bad checkpoints and bad arguments: one clear error, at the earliest point, nothing loaded."""

import json

import numpy as np
import pytest
from checkpoint_fixtures import flax_to_timm, flax_weights, timm_weights, write_hugging_face_dir
from safetensors.numpy import save_file

from keras_vit.models import CheckpointError, load_checkpoint
from keras_vit.models.checkpoints import sources

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_timm(tmp_path, tensors, name="m.safetensors"):
    save_file(tensors, str(tmp_path / name))
    return str(tmp_path / name)


def load_timm(path, **kwargs):
    return load_checkpoint(path, **{"num_heads": 2, **IMAGENET, **kwargs})


def test_missing_tensors_are_listed_a_few_then_a_count(tmp_path):
    tensors = timm_weights(seed=0)
    gone = [k for k in tensors if k.startswith(("blocks.1.mlp.", "blocks.1.norm2."))]
    assert len(gone) == 6
    path = write_timm(tmp_path, {k: v for k, v in tensors.items() if k not in gone})
    with pytest.raises(CheckpointError) as info:
        load_timm(path)
    message = str(info.value)
    assert "lacks 6 tensor(s)" in message and "and 1 more" in message
    assert sum(repr(k) in message for k in gone) == 5, message


def test_unexpected_tensors_are_named(tmp_path):
    tensors = dict(timm_weights(seed=0), reg_token=np.zeros((1, 4, 16), "float32"))
    tensors["blocks.0.attn.q_norm.weight"] = np.ones(8, "float32")
    with pytest.raises(CheckpointError, match=r"2 unexpected.*'blocks.0.attn.q_norm.weight', "
                                              r"'reg_token'"):
        load_timm(write_timm(tmp_path, tensors))


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    tensors = dict(timm_weights(seed=0))
    tensors["blocks.1.mlp.fc2.bias"] = np.zeros(17, "float32")
    with pytest.raises(CheckpointError) as info:
        load_timm(write_timm(tmp_path, tensors))
    message = str(info.value)
    for needle in ("'blocks.1.mlp.fc2.bias'", "(17,)", "(16,)", "encoder_block_1/mlp/dense2/bias"):
        assert needle in message, message


def test_not_a_vit_and_truncated_files_give_one_clear_error(tmp_path):
    other = write_timm(tmp_path, {"encoder.weight": np.zeros((4, 4), "float32")},
                       "bert.safetensors")
    with pytest.raises(CheckpointError, match="not a timm ViT state dict"):
        load_timm(other)
    whole = write_timm(tmp_path, timm_weights(seed=0))
    data = open(whole, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_timm(str(tmp_path / "cut.safetensors"))
    np.savez(tmp_path / "vit.npz", **flax_weights(seed=0))
    data = (tmp_path / "vit.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    for name in ("cut.npz", "junk.npz"):
        with pytest.raises(CheckpointError, match="not a readable .npz"):
            load_checkpoint(str(tmp_path / name))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a Google ViT npz"):
        load_checkpoint(str(tmp_path / "other.npz"))


def test_hugging_face_folder_of_another_model_type(tmp_path):
    directory = write_hugging_face_dir(tmp_path / "hf", {"x": np.zeros(2, "float32")})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    with pytest.raises(CheckpointError, match="model_type='bert' is not a ViT"):
        load_checkpoint(str(directory))


def test_image_size_is_rejected_before_any_weight_is_read(tmp_path, monkeypatch):
    def no_reading(self, key):
        raise AssertionError(f"read {key!r} before checking the image size")

    monkeypatch.setattr(sources.SafetensorsSource, "read", no_reading)
    monkeypatch.setattr(sources.NpzSource, "read", no_reading)
    np.savez(tmp_path / "vit.npz", **flax_weights(seed=0))
    path = write_timm(tmp_path, timm_weights(seed=0))
    for source, kwargs in ((str(tmp_path / "vit.npz"), {}), (path, dict(num_heads=2, **IMAGENET))):
        with pytest.raises(ValueError, match=r"patch_size=\(4, 4\) does not divide.*\(14, 12\)"):
            load_checkpoint(source, image_shape=(14, 12), **kwargs)
    with pytest.raises(ValueError, match="3-channel"):
        load_checkpoint(str(tmp_path / "vit.npz"), image_shape=(12, 12, 1))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mean=0.5, std=0.5), "num_heads="),
    (dict(num_heads=2), "mean= and std="),
    (dict(num_heads=3, mean=0.5, std=0.5), "does not divide the width 16"),
])
def test_timm_without_config_needs_heads_and_normalisation(tmp_path, kwargs, needle):
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(write_timm(tmp_path, timm_weights(seed=0)), **kwargs)


def test_checkpoint_without_head_needs_num_classes_or_no_top(tmp_path):
    np.savez(tmp_path / "in21k.npz", **flax_weights(seed=0, head=False))
    with pytest.raises(CheckpointError, match="no classification head: pass num_classes="):
        load_checkpoint(str(tmp_path / "in21k.npz"))
    assert load_checkpoint(str(tmp_path / "in21k.npz"), num_classes=3).output_shape == (None, 3)


def test_arguments_that_contradict_the_checkpoint(tmp_path):
    np.savez(tmp_path / "vit.npz", **flax_weights(seed=0))
    with pytest.raises(CheckpointError, match="num_heads=4 contradicts"):
        load_checkpoint(str(tmp_path / "vit.npz"), num_heads=4)
    with pytest.raises(CheckpointError, match="does not exist.*nothing is downloaded"):
        load_checkpoint(str(tmp_path / "missing.npz"))
    timm = flax_to_timm(flax_weights(seed=0))
    hf_file = tmp_path / "hf.safetensors"
    save_file({"vit." + k: v for k, v in timm.items()}, str(hf_file))
    with pytest.raises(CheckpointError, match="pass its folder"):
        load_checkpoint(str(hf_file))
