"""`keras-vit convert` (pipelines/convert.py) end to end on checkpoints written by the tests."""

import keras
import numpy as np
import pytest
from checkpoint_fixtures import flax_weights, random_images, timm_weights
from safetensors.numpy import save_file

from keras_vit.models import load_checkpoint
from pipelines.convert import main


@pytest.fixture()
def npz_path(tmp_path):
    np.savez(tmp_path / "vit.npz", **flax_weights(seed=0))
    return str(tmp_path / "vit.npz")


def test_convert_writes_a_keras_model_at_a_new_size_with_a_new_head(tmp_path, npz_path, capsys):
    out = tmp_path / "models" / "vit.keras"
    assert main([npz_path, str(out), "--image-size", "16,20", "--num-classes", "3"]) == 0
    assert "input (16, 20, 3), output (3,)" in capsys.readouterr().out
    loaded = keras.models.load_model(out)
    reference = load_checkpoint(npz_path, image_shape=(16, 20), num_classes=3)
    features = lambda m: keras.Model(m.input, m.get_layer("head").input)  # noqa: E731
    images = random_images((2, 16, 20, 3), seed=1)
    np.testing.assert_array_equal(features(loaded).predict(images, verbose=0),
                                  features(reference).predict(images, verbose=0))
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), np.zeros((2, 3)))
    assert sorted(p.name for p in out.parent.iterdir()) == ["vit.keras"]  # no temporary left


def test_convert_mean_and_std_normalise_the_pixels(tmp_path, npz_path, capsys):
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised, default = tmp_path / "normalised.keras", tmp_path / "default.keras"
    assert main([npz_path, str(normalised), "--mean", ",".join(map(str, mean)),
                 "--std", ",".join(map(str, std))]) == 0, capsys.readouterr().err
    assert main([npz_path, str(default)]) == 0, capsys.readouterr().err
    features = lambda m: keras.Model(m.input, m.get_layer("head").input)  # noqa: E731
    images = random_images((2, 12, 12, 3), seed=4).astype("float64")
    # The default model maps x to (x / 255 - 0.5) / 0.5; feed it pixels that map to
    # (x / 255 - mean) / std, the normalisation --mean/--std ask for.
    equivalent = 255.0 * (0.5 + 0.5 * (images / 255.0 - mean) / std)
    got = features(keras.models.load_model(normalised)).predict(images.astype("float32"),
                                                                verbose=0)
    expected = features(keras.models.load_model(default)).predict(
        equivalent.astype("float32"), verbose=0)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
    assert not np.allclose(got, features(keras.models.load_model(default)).predict(
        images.astype("float32"), verbose=0), atol=1e-2)


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "14,12"], "does not divide"),
    (["--num-heads", "3"], "num_heads=3 contradicts"),
    (["--num-heads", "0"], "num_heads must be a positive integer; received 0"),
])
def test_convert_errors_write_nothing(tmp_path, npz_path, capsys, args, needle):
    out = tmp_path / "out" / "vit.keras"
    assert main([npz_path, str(out), *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_rejects_a_non_keras_output_name(tmp_path, npz_path, capsys):
    assert main([npz_path, str(tmp_path / "vit.h5")]) == 2
    assert ".keras" in capsys.readouterr().err
    assert not (tmp_path / "vit.h5").exists()


def test_convert_keeps_an_existing_output_unless_overwrite(tmp_path, npz_path, capsys):
    out = tmp_path / "vit.keras"
    out.write_bytes(b"a model trained for a week")
    assert main([npz_path, str(out), "--num-classes", "3"]) == 2
    error = capsys.readouterr().err
    assert f"the output {str(out)!r} exists; pass --overwrite" in error
    assert out.read_bytes() == b"a model trained for a week"
    assert main([npz_path, str(out), "--num-classes", "3", "--overwrite"]) == 0
    assert keras.models.load_model(out).output_shape == (None, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.keras", "vit.npz"]


def test_convert_missing_checkpoint_is_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "missing.npz"), str(tmp_path / "vit.keras")]) == 2
    assert "missing.npz' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "vit.keras").exists()


def test_convert_with_an_unreadable_models_config_writes_nothing(tmp_path, npz_path, capsys):
    export_dir = tmp_path / "savedmodels"
    export_dir.mkdir()
    (export_dir / "models.config").write_text("model_config_list { config { name: ")
    out = tmp_path / "vit.keras"
    assert main([npz_path, str(out), "--export", "vit", "--export-dir", str(export_dir)]) == 2
    assert "models.config" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in export_dir.iterdir()) == ["models.config"]


def test_convert_write_failure_exits_1(tmp_path, npz_path, capsys):
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    assert main([npz_path, str(tmp_path / "blocker" / "vit.keras")]) == 1
    assert "keras-vit convert: error:" in capsys.readouterr().err
    assert (tmp_path / "blocker").read_text() == "a file where the output folder should be"


@pytest.mark.slow
def test_convert_exports_a_served_savedmodel(tmp_path, capsys):
    save_file(timm_weights(seed=2, distilled=True), str(tmp_path / "deit.safetensors"))
    out, export_dir = tmp_path / "deit.keras", tmp_path / "savedmodels"
    code = main([str(tmp_path / "deit.safetensors"), str(out), "--num-heads", "2",
                 "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                 "--export", "deit", "--export-dir", str(export_dir)])
    assert code == 0, capsys.readouterr().err
    assert (export_dir / "deit" / "1" / "saved_model.pb").is_file()
    assert (export_dir / "models.config").is_file()
    import tensorflow as tf

    served = tf.saved_model.load(str(export_dir / "deit" / "1"))
    images = random_images((2, 12, 12, 3), seed=3)
    model = keras.models.load_model(out)
    signature = served.signatures["serving_default"]
    outputs = signature(**{list(signature.structured_input_signature[1])[0]: tf.constant(images)})
    logits = model.predict(images, verbose=0).astype("float64")
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
