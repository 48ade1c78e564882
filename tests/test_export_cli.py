"""Tests of `keras-vit export` as a command line (pipelines/export.py).

Exit codes, one-line errors for bad `--model` files, `--help` from `python -m`, and
exports of saved `.keras` files (the tiny model of test_export.py and the package ViT).
"""

import os
import pathlib
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_export import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    NUM_CLASSES,
    keras_probabilities,
    make_tiny_trained_model,
    pixel_images,
)

from pipelines import export
from pipelines.serving.samples import encode_png


@pytest.fixture(scope="module")
def model():
    return make_tiny_trained_model()

def test_cli_help_documents_every_option():
    text = export.build_parser().format_help()
    options = "--model --name --base-dir --class-names --top-k --keep --verify --no-verify"
    options += " --config-base-path --absolute-base-paths --version-policy --quiet"
    for option in options.split():
        assert option in text, option


@pytest.mark.slow
def test_cli_exports_a_keras_file(model, tmp_path, capsys):
    from pipelines import cli

    path = tmp_path / "tiny.keras"
    model.save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASS_NAMES) + "\n")
    base = tmp_path / "savedmodels"
    argv = ["export", "--model", str(path), "--name", "cli", "--base-dir", str(base)]
    argv += ["--class-names", f"@{labels}", "--top-k", "2", "--no-verify", "--keep", "1"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    assert export.list_versions(base / "cli") == [2]
    assert "Exported cli version 2" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(base / "cli" / "2"))
    images = pixel_images(2)
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(
        outputs["probabilities"].numpy(), keras_probabilities(model, images), atol=1e-5
    )
    assert outputs["top_k_labels"].shape == (2, 2)

    assert export.main(["--model", str(path), "--name", "bad name", "--base-dir", str(base)]) == 2
    assert "Invalid model name 'bad name'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_package_vit_exports_through_the_cli(tmp_path):
    """The real ViT (custom layers, attention) saved as .keras and exported by the CLI."""
    models = pytest.importorskip("keras_vit.models")
    keras.utils.set_random_seed(2)
    model = models.vision_transformer(
        "Ti/4",
        image_shape=IMAGE_SHAPE,
        num_classes=NUM_CLASSES,
        hidden_dim=16,
        depth=1,
        mlp_dim=32,
        num_heads=2,
    )
    path = tmp_path / "vit.keras"
    model.save(path)
    base = tmp_path / "savedmodels"
    argv = ["--model", str(path), "--name", "vit", "--base-dir", str(base), "--no-verify"]
    assert export.main(argv + ["--quiet"]) == 0
    version = base / "vit" / "1"
    assert export.find_disallowed_ops(version) == []
    loaded = tf.saved_model.load(str(version))
    images = pixel_images(2)
    png = tf.constant([tf.io.encode_png(image.astype(np.uint8)).numpy() for image in images])
    expected = keras_probabilities(model, images)
    for outputs in (
        loaded.signatures["serving_default"](images=tf.constant(images)),
        loaded.signatures["serving_bytes"](images_bytes=png),
    ):
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4)
    empty = loaded.signatures["serving_bytes"](images_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, NUM_CLASSES)


def _bad_model_file(tmp_path, kind):
    path = tmp_path / "model.keras"
    if kind == "missing":
        return path
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
        return path
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", np.random.default_rng(1).bytes(5000))
    if kind == "truncated-zip":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zip-without-keras-config":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    return path


_BAD_MODEL_MESSAGES = {
    "missing": "--model {path}: no such file",
    "random-bytes": "--model {path} is corrupt or not a Keras model file: not a complete "
    ".keras zip archive",
    "truncated-zip": "--model {path} is corrupt or not a Keras model file: not a complete "
    ".keras zip archive",
    "zip-without-keras-config": "--model {path} is corrupt or not a Keras model file: the zip "
    "archive has no config.json, metadata.json",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_BAD_MODEL_MESSAGES))
def test_cli_rejects_a_bad_model_file_in_one_line(tmp_path, kind):
    path = _bad_model_file(tmp_path, kind)
    before = sorted(tmp_path.rglob("*"))
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    argv = ["--model", str(path), "--name", "m", "--base-dir", str(tmp_path / "savedmodels")]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "export", *argv],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 2
    message = _BAD_MODEL_MESSAGES[kind].format(path=path)
    assert result.stderr.splitlines() == [f"keras-vit export: error: {message}"]
    assert result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before  # no savedmodels folder, file untouched


@pytest.mark.slow
def test_cli_rejects_a_keras_file_with_a_damaged_member(model, tmp_path, capsys):
    """A complete archive whose weights fail their CRC: found while Keras loads it."""
    path = tmp_path / "damaged.keras"
    model.save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("model.weights.h5")
    data[member.header_offset + 30 + len(member.filename) + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    base = tmp_path / "savedmodels"
    code = export.main(["--model", str(path), "--name", "m", "--base-dir", str(base)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    message = (
        f"keras-vit export: error: --model {path} is corrupt or not a Keras model file: "
        "Bad CRC-32 for file 'model.weights.h5'"
    )
    assert captured.err.splitlines() == [message]
    assert not base.exists()


@pytest.mark.slow
@pytest.mark.parametrize("module", ["pipelines.export", "pipelines.cli export"])
def test_export_help_from_the_command_line(module):
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", *module.split(), "--help"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keras-vit export")
    assert "--model" in result.stdout and "Exit status" in result.stdout


@pytest.mark.slow
def test_command_line_modules_do_not_import_tensorflow():
    """So --help and argument errors (a bad --model file) answer at once, in one line."""
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    code = (
        "import sys, pipelines.cli, pipelines.export, pipelines.predict; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_cli_refuses_a_broken_models_config_before_exporting(model, tmp_path, capsys):
    """The export rewrites models.config from the one it finds: a file that does not
    parse is a usage error (2) naming the file, found before the model is loaded."""
    path = tmp_path / "tiny.keras"
    model.save(path)
    base = tmp_path / "savedmodels"
    base.mkdir()
    config = base / "models.config"
    config.write_text("garbage {{{\n")
    code = export.main(["--model", str(path), "--name", "m", "--base-dir", str(base)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"keras-vit export: error: {config} is not a valid models.config")
    assert 'has no field named "garbage"' in line
    assert [p.name for p in base.iterdir()] == ["models.config"]
    assert config.read_text() == "garbage {{{\n"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "blank", "duplicates", "file-duplicates",
                                  "not-utf8", "no-file"])
def test_cli_rejects_bad_class_names_naming_them(model, tmp_path, capsys, kind):
    """Empty, repeated or unreadable --class-names: exit 2, one line naming the flag,
    the value and the bad entries or file, nothing written."""
    path = tmp_path / "tiny.keras"
    model.save(path)
    names_file = tmp_path / "labels.txt"
    if kind == "file-duplicates":
        names_file.write_text("cat\n\ndog\ncat\nbird\n")
    elif kind == "not-utf8":
        names_file = tmp_path / "labels.png"
        names_file.write_bytes(encode_png(np.zeros((1, 4, 4, 3), np.uint8))[0])
    value = {"empty": "cat,,dog,bird", "blank": "cat, ,dog,bird,", "duplicates": "cat,cat,dog",
             "file-duplicates": f"@{names_file}", "not-utf8": f"@{names_file}",
             "no-file": f"@{tmp_path / 'missing.txt'}"}[kind]
    expected = {
        "empty": "--class-names 'cat,,dog,bird': class names must be non-empty and distinct: "
                 "#2 is empty",
        "blank": "--class-names 'cat, ,dog,bird,': class names must be non-empty and distinct: "
                 "#2 is empty; #5 is empty",
        "duplicates": "--class-names 'cat,cat,dog': class names must be non-empty and distinct: "
                      "'cat' is repeated (#1, #2)",
        "file-duplicates": f"--class-names '@{names_file}': class names must be non-empty and "
                           "distinct: 'cat' is repeated (#1, #3)",
        "not-utf8": f"--class-names @{names_file}: {names_file} is not UTF-8 text with one class "
                    "name per line ('utf-8' codec can't decode byte 0x89 in position 0",
        "no-file": f"--class-names @{tmp_path / 'missing.txt'}: cannot read "
                   f"{tmp_path / 'missing.txt'}: No such file or directory",
    }[kind]
    before = sorted(tmp_path.rglob("*"))
    base = tmp_path / "savedmodels"
    code = export.main(["--model", str(path), "--name", "m", "--base-dir", str(base),
                        "--class-names", value])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"keras-vit export: error: {expected}"), line
    assert sorted(tmp_path.rglob("*")) == before and not base.exists()


@pytest.mark.slow
def test_cli_names_a_sequence_model_and_how_it_is_exported(tmp_path, capsys):
    """A `keras-vit train --task sequence` best.keras: not a classifier; the one line
    says what it is and which command exports it (with its vocabulary and beam search)."""
    from keras_vit.models import image_to_sequence

    keras.utils.set_random_seed(3)
    model = image_to_sequence("Ti/4", (8, 16, 1), 13, max_length=5, decoder_layers=1,
                              hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)
    path = tmp_path / "best.keras"
    model.save(path)
    base = tmp_path / "savedmodels"
    code = export.main(["--model", str(path), "--name", "strings", "--base-dir", str(base)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"keras-vit export: error: --model {path}: {model.name} is an "
                           "image-to-sequence model (logits of shape (None, None, 13)")
    assert "exported with their vocabulary and beam search by `keras-vit train --task " \
           "sequence`" in line
    assert "export_sequence_model(" in line
    assert not base.exists()
