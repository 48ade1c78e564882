"""`keras-vit train --task sequence` end to end, its export and `keras-vit predict` on it.

Tiny models on `digit_strings/small` and on a folder with labels.csv, a few
hundred steps, float32 without XLA. References: the Keras model reloaded from
`best.keras` and decoded in this process (`keras_vit.models.decoding`), the
files the tests write, and numpy recomputations of the scores.
"""

import io
import json
import pathlib
from contextlib import redirect_stderr, redirect_stdout

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sequence_fixtures import digit_strings_data_dir, write_folder_dataset  # noqa: F401
from tensorflow.core.protobuf import saved_model_pb2

from keras_vit.models.decoding import beam_search, greedy_decode
from pipelines.sequence.executor import SINGLE_THREADED_EXECUTOR
from pipelines.sequence.metrics import character_error_rate, exact_match_accuracy
from pipelines.sequence.vocab import END, PAD, START, CharVocabulary

TINY = ["--hidden-dim", "32", "--depth", "1", "--num-heads", "2", "--mlp-dim", "64",
        "--decoder-layers", "1", "--batch-size", "16", "--learning-rate", "3e-3",
        "--verbose", "0"]
IDS = {"start_id": START, "end_id": END, "pad_id": PAD}
#: --model-name of the digit_strings run (default: sequence_digit_strings_small).
MODEL_NAME = "digit_reader"


def run_cli(module, argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = module.main(argv)
    return code, out.getvalue(), err.getvalue()


def train(argv):
    from pipelines.training import cli

    return run_cli(cli, ["--task", "sequence"] + TINY + argv)


def decode(model, images, method, beam_width=4, length_penalty=0.6, tta_shift=0):
    """Decodes `images`; with `tta_shift`, all their shifted views, probabilities averaged."""
    from keras_vit.layers import ShiftedViews

    images = np.asarray(images, np.float32)
    views = {}
    if tta_shift:
        views = {"num_views": (2 * tta_shift + 1) ** 2}
        images = np.asarray(ShiftedViews(tta_shift)(images))
    if method == "greedy":
        function = tf.function(lambda x: greedy_decode(model, x, **IDS, **views))
    else:
        function = tf.function(lambda x: beam_search(model, x, beam_width=beam_width,
                                                     length_penalty=length_penalty, **IDS,
                                                     **views))
    tokens, scores = function(tf.constant(images))
    return tokens.numpy(), scores.numpy()


def load_run(run_dir):
    model = keras.saving.load_model(run_dir / "best.keras")
    return model, CharVocabulary.load(run_dir / "vocab.json")


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory, digit_strings_data_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("sequence_job")
    run_dir, export_dir = root / "run", root / "exports"
    code, out, err = train(["--dataset", "digit_strings/small", "--data-dir",
                            digit_strings_data_dir, "--offline", "--epochs", "2",
                            "--output-dir", str(run_dir), "--export-dir", str(export_dir),
                            "--model-name", MODEL_NAME,
                            "--verbose", "2"])  # 2: one line per epoch and the verification
    assert code == 0, err[-3000:]
    return {"run_dir": run_dir, "export_dir": export_dir, "out": out,
            "data_dir": digit_strings_data_dir, "root": root}


@pytest.mark.slow
def test_run_folder_metrics_and_attention_figure(digit_run):
    run_dir = digit_run["run_dir"]
    for name in ("best.keras", "vocab.json", "history.csv", "history.json", "run_config.json",
                 "training_curves.png", "cross_attention.png", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for method in ("greedy", "beam"):
        assert 0.0 <= metrics[f"test_exact_accuracy_{method}"] <= 1.0
        assert metrics[f"test_cer_{method}"] >= 0.0
    assert metrics["task"] == "sequence" and metrics["epochs_this_run"] == 2
    assert metrics["tta_shift"] == 2  # the preset: 25 shifted views per image
    assert metrics["vocabulary"] == "0123456789"
    # The preset fits on train+validation: no validation pass, the last epoch kept.
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["accuracy"]) == 2 and "val_accuracy" not in history
    assert metrics["fit_on"] == "train+validation" and metrics["config"]["augmentation"] == "affine"
    assert not (run_dir / "best.weights.h5").exists()
    figure = Image.open(run_dir / "cross_attention.png")
    assert figure.format == "PNG" and figure.size[0] > 2 * figure.size[1] // 4
    assert "exact-sequence accuracy" in digit_run["out"]


@pytest.mark.slow
def test_metrics_equal_a_recomputation_from_best_keras(digit_run):
    from pipelines.sequence.data import load_sequence_data

    model, vocab = load_run(digit_run["run_dir"])
    data = load_sequence_data("digit_strings/small", batch_size=64, max_length=8,
                              data_dir=digit_run["data_dir"], offline=True)
    metrics = json.loads((digit_run["run_dir"] / "metrics.json").read_text())
    for method in ("greedy", "beam"):
        tokens, _ = decode(model, data.test_images, method, tta_shift=metrics["tta_shift"])
        texts = [vocab.decode(row) for row in tokens]
        assert metrics[f"test_exact_accuracy_{method}"] == pytest.approx(
            exact_match_accuracy(data.test_texts, texts))
        assert metrics[f"test_cer_{method}"] == pytest.approx(
            character_error_rate(data.test_texts, texts))


@pytest.mark.slow
def test_export_is_verified_servable_and_reads_like_the_keras_model(digit_run):
    from pipelines.serving.op_audit import find_disallowed_ops
    from pipelines.serving.signatures import read_metadata

    version = digit_run["export_dir"] / MODEL_NAME / "1"
    assert version.is_dir() and (digit_run["export_dir"] / "models.config").is_file()
    assert "Verified" in digit_run["out"] and "self-contained" in digit_run["out"]
    assert find_disallowed_ops(version) == []
    metadata = read_metadata(version)
    assert metadata["task"] == "sequence" and metadata["model_name"] == MODEL_NAME
    assert sorted(p.name for p in digit_run["export_dir"].iterdir()) == [MODEL_NAME,
                                                                        "models.config"]
    assert metadata["vocabulary"]["characters"] == list("0123456789")
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
    # The beam search loop runs by the single-threaded executor (pipelines/sequence/executor.py).
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    calls = [node.attr["executor_type"].s for f in graph.library.function for node in f.node_def
             if node.op in ("PartitionedCall", "StatefulPartitionedCall")]
    assert SINGLE_THREADED_EXECUTOR.encode() in calls

    model, vocab = load_run(digit_run["run_dir"])
    from pipelines.sequence.data import load_sequence_data

    images = load_sequence_data("digit_strings/small", batch_size=64, max_length=8,
                                data_dir=digit_run["data_dir"], offline=True).test_images[:16]
    served = tf.saved_model.load(str(version)).signatures["serving_default"](
        images=tf.constant(images))
    assert metadata["decoding"]["tta_shift"] == 2
    tokens, scores = decode(model, images, "beam", metadata["decoding"]["beam_width"],
                            tta_shift=metadata["decoding"]["tta_shift"])
    np.testing.assert_array_equal(served["tokens"].numpy(), tokens)
    np.testing.assert_allclose(served["scores"].numpy(), scores, atol=1e-4)
    texts = [t.decode() for t in served["text"].numpy()]
    assert texts == [vocab.decode(row) for row in tokens]
    assert any(texts), "the trained model reads nothing: the comparison would be vacuous"


@pytest.mark.slow
def test_beam_width_1_export_equals_greedy_decoding(digit_run, tmp_path):
    from pipelines.data.digit_strings import generate_strings
    from pipelines.serving.sequence import write_sequence_saved_model

    model, vocab = load_run(digit_run["run_dir"])
    write_sequence_saved_model(model, vocab, tmp_path / "greedy", beam_width=1,
                               length_penalty=0.0)
    images = np.stack([e["image"] for e in generate_strings("test", 12)]).astype("float32")
    served = tf.saved_model.load(str(tmp_path / "greedy")).signatures["serving_default"](
        images=tf.constant(images))
    tokens, _ = decode(model, images, "greedy")
    np.testing.assert_array_equal(served["tokens"].numpy(), tokens)
    assert [t.decode() for t in served["text"].numpy()] == [vocab.decode(r) for r in tokens]


@pytest.mark.slow
def test_predict_prints_the_text_of_a_png(digit_run, tmp_path):
    from pipelines import predict
    from pipelines.data.digit_strings import generate_strings
    from pipelines.serving.signatures import read_metadata

    model, vocab = load_run(digit_run["run_dir"])
    example = list(generate_strings("test", 5))[4]
    path = tmp_path / "string.png"
    Image.fromarray(example["image"][:, :, 0], mode="L").save(path)
    version = digit_run["export_dir"] / MODEL_NAME / "1"
    code, out, err = run_cli(predict, [str(path), "--saved-model", str(version)])
    assert code == 0, err
    decoding = read_metadata(version)["decoding"]  # the preset's views, as served
    tokens, scores = decode(model, example["image"][None], "beam", tta_shift=decoding["tta_shift"])
    expected = f"  text: {vocab.decode(tokens[0])}  (score {scores[0]:.4f})"
    assert out.splitlines() == [str(path), expected]


@pytest.mark.slow
def test_served_model_refuses_bad_images_naming_the_value_or_file(digit_run, tmp_path):
    from pipelines import predict

    version = digit_run["export_dir"] / MODEL_NAME / "1"
    signatures = tf.saved_model.load(str(version)).signatures
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        signatures["serving_default"](images=tf.zeros((1, 17, 64, 1)))
    message = " ".join(str(error.value).split())
    assert "images must be float32 [batch, 16, 64, 1]; got shape] [1 17 64 1]" in message, message
    with pytest.raises(tf.errors.InvalidArgumentError):
        signatures["serving_bytes"](images_bytes=tf.constant([b"not an image"]))
    for bad in (np.nan, np.inf, -np.inf):
        images = np.zeros((2, 16, 64, 1), np.float32)
        images[1, 3, 5, 0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
            signatures["serving_default"](images=tf.constant(images))

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((16, 64), np.uint8), mode="L").save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:40])  # a PNG header, then nothing
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    large = tmp_path / "large.png"
    Image.fromarray(np.zeros((20, 80), np.uint8), mode="L").save(large)
    for signature in ("serving_bytes", "serving_default"):
        flags = ["--saved-model", str(version), "--signature", signature]
        code, out, err = run_cli(predict, [str(good), str(cut)] + flags)
        assert code == 1 and out == "", err
        assert "Invalid PNG" in err and f"(files that do not decode: {cut})" in err, err
        code, out, err = run_cli(predict, [str(text)] + flags)
        assert (code, out) == (1, "")
        assert err == f"keras-vit predict: error: {text} is not a JPEG, PNG, GIF, BMP or WebP file\n"
        # Another size is resized, and said so: the text is read from the resized image.
        code, out, err = run_cli(predict, [str(large)] + flags)
        assert code == 0 and "resizing 1 of 1 image to 16x64 (from 20x80)" in err
        assert out.splitlines()[0] == str(large) and out.splitlines()[1].startswith("  text: ")


@pytest.mark.slow
def test_new_export_is_a_new_version_and_a_finished_run_is_refused(digit_run):
    from pipelines.serving.sequence import export_sequence_model

    model, vocab = load_run(digit_run["run_dir"])
    first = digit_run["export_dir"] / MODEL_NAME / "1"
    before = {p.name: p.stat().st_mtime_ns for p in first.rglob("*")}
    version = export_sequence_model(model, vocab, MODEL_NAME,
                                    digit_run["export_dir"], verify=False, verbose=False)
    assert version.name == "2"
    assert {p.name: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    code, _, err = train(["--dataset", "digit_strings/small", "--data-dir", digit_run["data_dir"],
                          "--epochs", "2", "--output-dir", str(digit_run["run_dir"])])
    assert code == 2 and "holds a finished run" in err


@pytest.mark.slow
def test_folder_with_labels_csv_end_to_end(tmp_path):
    from pipelines import predict
    from pipelines.serving.signatures import read_metadata

    root = tmp_path / "letters"
    written = write_folder_dataset(root, sizes=(96, 16, 16))
    odd = root / "train" / written["train"][0][0]  # another size: resized by --image-size
    Image.fromarray(np.zeros((20, 80), np.uint8), mode="L").save(odd)
    run_dir, export_dir = tmp_path / "run", tmp_path / "exports"
    code, out, err = train(["--dataset", f"folder:{root}", "--epochs", "1",
                            "--output-dir", str(run_dir), "--export-dir", str(export_dir),
                            "--no-verify-export", "--beam-width", "2", "--image-size", "16,64",
                            "--patch-size", "8x4", "--position-embedding", "sincos2d",
                            "--max-length", "7", "--length-penalty", "0.3"])
    assert code == 0, err[-3000:]
    train_chars = sorted(set("".join(text for _, text in written["train"])))
    vocab = CharVocabulary.load(run_dir / "vocab.json")
    assert list(vocab.characters) == train_chars
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test_exact_accuracy_beam", "test_cer_greedy"} <= set(metrics)
    assert (run_dir / "cross_attention.png").is_file()
    version = export_dir / "sequence_letters" / "1"
    metadata = read_metadata(version)
    assert metadata["vocabulary"]["characters"] == train_chars
    assert metadata["max_length"] == 7 and metadata["decoding"]["length_penalty"] == 0.3
    model = keras.saving.load_model(run_dir / "best.keras")
    assert model.get_layer("patch_embedding").patch_size == (8, 4)
    image_path = root / "test" / written["test"][0][0]
    code, out, err = run_cli(predict, [str(image_path), "--saved-model", str(version)])
    assert code == 0, err
    pixels = np.asarray(Image.open(image_path), np.float32)[None, :, :, None]
    tokens, _ = decode(model, pixels, "beam", beam_width=2, length_penalty=0.3)
    assert out.splitlines()[1].startswith(f"  text: {vocab.decode(tokens[0])}  (score ")
    assert pathlib.Path(out.splitlines()[0]) == image_path
