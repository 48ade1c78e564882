"""End-to-end tests of the `keras-vit export` and `keras-vit predict` options that
tests/test_export_cli.py and tests/test_predict.py leave out.

export (through `pipelines.cli`, the `keras-vit` entry point):
  * `--class-names a,b,...` (the comma form of the help example): the names land in
    the export's metadata and `top_k_labels`, and `keras-vit predict` prints them;
  * `--config-base-path`, `--absolute-base-paths` and `--version-policy`: the
    `models.config` each CLI export writes;
  * exit status 1 ("export failed"), from `python -m pipelines.cli export` in a
    fresh process and from an export refused by the op audit: one line naming the
    value, nothing half-written.

predict:
  * `--grpc` with `--signature serving_default` (float pixels decoded on the client);
  * GIF and BMP files through every back end and both signatures;
  * `--image-size H,W[,C]` with a server that gives no model metadata, a wrong size
    refused by the server, and `--saved-model` ignoring it;
  * an image-to-sequence export read through `--server` (REST) and `--grpc`, as
    text and as `--json`.

References: the Keras model run in this process on pixels decoded with PIL (a
decoder independent of TensorFlow), the SavedModel's signatures run in this process,
and the `--saved-model` path's output. The REST and gRPC servers are the in-process
stand-ins of tests/test_predict.py.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import threading
from concurrent import futures
from contextlib import redirect_stderr, redirect_stdout
from http.server import HTTPServer

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_export import CLASS_NAMES, IMAGE_SHAPE, keras_probabilities, make_tiny_trained_model
from test_predict import MODEL_NAME, _PredictionService, _RestHandler

from pipelines import cli, export
from pipelines.data.images import resize_pixels

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow_only]

ROOT = pathlib.Path(__file__).parents[1]
#: `--class-names` as a user types it: commas, stray spaces.
CLASS_NAMES_ARG = "cat, dog,bird ,fish"
TOP_K = len(CLASS_NAMES)


def run_cli(argv):
    """`keras-vit ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def tree(root):
    """Every path under `root` (relative) with each file's bytes: what a server would see."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def config_entries(base_dir):
    config = export.read_models_config(base_dir)
    return {entry.name: entry for entry in config.model_config_list.config}


# ------------------------------------------------------------------ servers


class _NoMetadataService(_PredictionService):
    """A gRPC server that predicts but gives no model metadata (as a proxy might)."""

    def GetModelMetadata(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetModelMetadata is not served here")


class _SequenceRestHandler(_RestHandler):
    """The REST stand-in, answering with TF Serving's JSON for any output rank.

    TF Serving writes a string output as a JSON string (base64 only for names ending
    in `_bytes`), so the sequence export's `text [batch]` comes back as strings.
    """

    def do_POST(self):
        import base64

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature_name = body.get("signature_name", "serving_default")
        signature = self.server.loaded.signatures[signature_name]
        ((input_name, spec),) = signature.structured_input_signature[1].items()
        values = body["instances"]
        if spec.dtype == tf.string:
            tensor = tf.constant([base64.b64decode(v["b64"]) for v in values], tf.string)
        else:
            tensor = tf.constant(np.asarray(values, np.float32))
        try:
            outputs = {k: v.numpy() for k, v in signature(**{input_name: tensor}).items()}
        except tf.errors.InvalidArgumentError as error:
            return self._reply(400, {"error": error.message})
        rows = [{key: _to_json(value[i]) for key, value in outputs.items()}
                for i in range(len(values))]
        self._reply(200, {"predictions": rows})


def _to_json(value):
    """One row of one output as TF Serving writes it: strings as JSON strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_to_json(v) for v in value]
    return value.tolist()


def start_rest(version_dir, loaded, handler=_RestHandler):
    server = HTTPServer(("127.0.0.1", 0), handler)
    server.loaded, server.version_dir = loaded, version_dir
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def start_grpc(version_dir, loaded, service=_PredictionService):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        service(loaded, version_dir), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers():
    """Starts stand-in servers on demand; stops them all at the end of the module."""
    started = []

    def start(kind, version_dir, loaded, **options):
        server, address = (start_rest if kind == "rest" else start_grpc)(
            version_dir, loaded, **options)
        started.append((kind, server))
        return address

    yield start
    for kind, server in started:
        if kind == "rest":
            server.shutdown()
            server.server_close()
        else:
            server.stop(0)


# --------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """The tiny trained classifier of test_export.py, saved as a .keras file."""
    model = make_tiny_trained_model()
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def classifier(keras_file, tmp_path_factory, servers):
    """`keras-vit export --class-names cat,...` of the .keras file, served three ways."""
    model, path = keras_file
    base = tmp_path_factory.mktemp("savedmodels")
    code, out, err = run_cli(["export", "--model", str(path), "--name", MODEL_NAME,
                              "--base-dir", str(base), "--class-names", CLASS_NAMES_ARG,
                              "--top-k", str(TOP_K), "--no-verify", "--quiet"])
    assert code == 0, err
    version_dir = base / MODEL_NAME / "1"
    assert out == f"{version_dir}\n"
    loaded = tf.saved_model.load(str(version_dir))
    return {
        "model": model, "base": base, "version_dir": version_dir, "loaded": loaded,
        "saved-model": ["--saved-model", str(version_dir)],
        "rest": ["--server", servers("rest", version_dir, loaded), "--model-name", MODEL_NAME],
        "grpc": ["--grpc", servers("grpc", version_dir, loaded), "--model-name", MODEL_NAME],
    }


def _encode(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gif_bmp_files(tmp_path_factory):
    """A BMP and a GIF at the model size and a larger BMP, with the pixels the model
    should see, decoded by PIL and resized with the training pipeline's resize."""
    folder = tmp_path_factory.mktemp("gif_bmp")
    rng = np.random.default_rng(21)
    sources = {
        "a.bmp": rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
        "b.gif": rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),  # palette-quantised
        "c.bmp": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8),
    }
    paths, pixels = [], []
    for name, image in sources.items():
        path = folder / name
        path.write_bytes(_encode(image, name.split(".")[1].upper()))
        decoded = np.asarray(Image.open(path).convert("RGB"))
        if decoded.shape != IMAGE_SHAPE:
            decoded = resize_pixels(decoded, IMAGE_SHAPE[:2]).numpy()
        paths.append(str(path))
        pixels.append(decoded.astype(np.float32))
    return paths, np.stack(pixels)


GIF_BMP_NOTE = "keras-vit predict: resizing 1 of 3 images to 16x16 (from 24x20)\n"


def expected_rows(model, paths, pixels):
    """The `--json` rows the Keras model's probabilities give, all classes ranked."""
    probabilities = keras_probabilities(model, pixels)
    return [{"image": path, "predictions": [
        {"label": CLASS_NAMES[c], "score": float(row[c])} for c in np.argsort(-row)]}
        for path, row in zip(paths, probabilities)]


def assert_same_predictions(rows, expected, atol=1e-5):
    assert [row["image"] for row in rows] == [row["image"] for row in expected]
    for row, reference in zip(rows, expected):
        assert [p["label"] for p in row["predictions"]] == [
            p["label"] for p in reference["predictions"]], (row, reference)
        np.testing.assert_allclose([p["score"] for p in row["predictions"]],
                                   [p["score"] for p in reference["predictions"]], atol=atol)


def predict(*argv):
    return run_cli(["predict", *argv])


# ------------------------------------------------------------ export options


def test_cli_class_names_comma_form_reach_the_export_and_predict(classifier, gif_bmp_files):
    version_dir, loaded = classifier["version_dir"], classifier["loaded"]
    metadata = export.read_metadata(version_dir)
    assert metadata["class_names"] == CLASS_NAMES  # spaces around the commas stripped
    assert metadata["top_k"] == TOP_K
    paths, pixels = gif_bmp_files
    outputs = loaded.signatures["serving_default"](images=tf.constant(pixels))
    classes = outputs["top_k_classes"].numpy()
    labels = outputs["top_k_labels"].numpy().astype(str).tolist()
    assert labels == [[CLASS_NAMES[c] for c in row] for row in classes]
    # And keras-vit predict prints them, ranked as the model ranks the classes.
    code, out, err = predict(paths[0], *classifier["saved-model"], "--top-k", "2")
    assert code == 0, err
    best = np.argsort(-keras_probabilities(classifier["model"], pixels[:1])[0])[:2]
    assert [line.split()[1] for line in out.splitlines()[1:]] == [CLASS_NAMES[c] for c in best]


def test_cli_config_base_path_and_version_policy_in_models_config(keras_file, tmp_path):
    _, path = keras_file
    base = tmp_path / "savedmodels"
    common = ["export", "--model", str(path), "--base-dir", str(base), "--no-verify", "--quiet"]
    code, out, err = run_cli([*common, "--name", "a", "--config-base-path", "/srv/tf-models/",
                              "--version-policy", "latest:2"])
    assert (code, out) == (0, f"{base / 'a' / '1'}\n"), err
    text = (base / "models.config").read_text()
    assert 'base_path: "/srv/tf-models/a"' in text
    (entry,) = config_entries(base).values()
    assert entry.base_path == "/srv/tf-models/a" and entry.model_platform == "tensorflow"
    assert entry.model_version_policy.latest.num_versions == 2

    # A second model with absolute paths: every entry is rewritten with them, and
    # a's policy is kept; --absolute-base-paths wins over --config-base-path.
    code, _, err = run_cli([*common, "--name", "b", "--absolute-base-paths",
                            "--config-base-path", "/ignored", "--version-policy",
                            "specific:1"])
    assert code == 0, err
    entries = config_entries(base)
    assert sorted(entries) == ["a", "b"]
    assert entries["a"].base_path == str((base / "a").resolve())
    assert entries["b"].base_path == str((base / "b").resolve())
    assert list(entries["b"].model_version_policy.specific.versions) == [1]
    assert entries["a"].model_version_policy.latest.num_versions == 2
    assert "/ignored" not in (base / "models.config").read_text()

    # No --version-policy keeps b's; the default --config-base-path is /models.
    code, out, err = run_cli([*common, "--name", "b"])
    assert (code, out) == (0, f"{base / 'b' / '2'}\n"), err
    entries = config_entries(base)
    assert [entries[n].base_path for n in ("a", "b")] == ["/models/a", "/models/b"]
    assert list(entries["b"].model_version_policy.specific.versions) == [1]
    code, _, err = run_cli([*common, "--name", "b", "--version-policy", "all"])
    assert code == 0, err
    assert config_entries(base)["b"].model_version_policy.HasField("all")
    assert export.list_versions(base / "b") == [1, 2, 3]

    # A bad policy is a usage error (2) before anything is written.
    before = tree(base)
    code, out, err = run_cli([*common, "--name", "b", "--version-policy", "newest:2"])
    assert (code, out) == (2, "")
    assert err.startswith("keras-vit export: error: Invalid version policy 'newest:2'")
    assert tree(base) == before


def test_keep_and_version_policy_never_serve_versions_that_are_gone(keras_file, tmp_path):
    """--keep must not delete what a `specific` policy serves (given or kept from
    models.config), and a given one must name versions that will exist: usage
    errors (2) naming the versions, before anything is written."""
    _, path = keras_file
    base = tmp_path / "savedmodels"
    common = ["export", "--model", str(path), "--base-dir", str(base), "--name", "b",
              "--no-verify", "--quiet"]
    for _ in range(2):
        assert run_cli(common)[0] == 0

    def refused(*argv):
        before = tree(base)
        code, out, err = run_cli([*common, *argv])
        assert (code, out) == (2, ""), err
        assert tree(base) == before
        (line,) = err.splitlines()
        return line.removeprefix("keras-vit export: error: ")

    assert refused("--keep", "1", "--version-policy", "specific:1,2") == (
        "--keep 1 would delete version(s) [1, 2] of model b, served by --version-policy "
        "specific:1,2 (versions now: [1, 2]; after this export: [3]); keep more versions or "
        "give another --version-policy")
    assert refused("--version-policy", "specific:99") == (
        "--version-policy specific:99 serves version(s) [99] of model b, which will not "
        "exist: after this export it has versions [1, 2, 3]")
    assert refused("--keep", "2", "--version-policy", "specific:1,3").startswith(
        "--keep 2 would delete version(s) [1] of model b")

    # Pinned from an earlier export: a plain --keep may not delete the pinned versions.
    code, out, err = run_cli([*common, "--version-policy", "specific:1,2"])
    assert (code, out) == (0, f"{base / 'b' / '3'}\n"), err
    assert refused("--keep", "1") == (
        "--keep 1 would delete version(s) [1, 2] of model b, served by its version policy "
        "specific:1,2 (kept from models.config) (versions now: [1, 2, 3]; after this export: "
        "[4]); keep more versions or give another --version-policy")
    # A policy that serves what remains is accepted: the new version, pruned to it.
    code, _, err = run_cli([*common, "--keep", "2", "--version-policy", "specific:4"])
    assert code == 0, err
    assert export.list_versions(base / "b") == [3, 4]
    assert list(config_entries(base)["b"].model_version_policy.specific.versions) == [4]


def test_export_failure_exits_1_from_the_command_line(keras_file, tmp_path):
    """`python -m pipelines.cli export` into a --base-dir that is a file: status 1."""
    _, path = keras_file
    base = tmp_path / "not-a-folder"
    base.write_text("a file where the savedmodels folder should be\n")
    before = tree(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "export", "--model", str(path),
         "--name", "tiny", "--base-dir", str(base), "--no-verify"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    # TensorFlow's own start-up lines (absl, oneDNN) come first; ours is one line.
    ours = [line for line in result.stderr.splitlines() if line.startswith("keras-vit")]
    assert ours == [f"keras-vit export: error: [Errno 20] Not a directory: '{base / 'tiny'}'"]
    assert result.stderr.splitlines()[-1] == ours[0]
    assert tree(tmp_path) == before


@keras.saving.register_keras_serializable(package="test_export_predict_options")
class PythonCallback(keras.layers.Layer):
    """Runs Python inside the graph (tf.py_function): a stock model server cannot."""

    def call(self, x):
        y = tf.py_function(lambda t: t * 1.0, [x], tf.float32)
        return tf.ensure_shape(y, x.shape)


def test_export_refused_by_the_op_audit_exits_1_and_publishes_nothing(classifier, tmp_path):
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(PythonCallback()(inputs))
    path = tmp_path / "pyfunc.keras"
    keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES))(x)).save(path)
    base = classifier["base"]
    before = tree(base)
    code, out, err = run_cli(["export", "--model", str(path), "--name", MODEL_NAME,
                              "--base-dir", str(base), "--class-names", CLASS_NAMES_ARG])
    assert code == 1 and out == "", err
    assert err.splitlines() == [
        "keras-vit export: error: The export uses ops a stock tensorflow_model_server lacks:",
        "  EagerPyFunc: calls back into Python (tf.py_function/numpy_function)"], err
    # No version 2, no hidden temp folder, models.config unchanged; version 1 still serves.
    assert tree(base) == before
    assert export.list_versions(base / MODEL_NAME) == [1]


# ------------------------------------------------------------------ predict


def test_grpc_float_signature_prints_the_models_predictions(classifier, gif_bmp_files):
    paths, pixels = gif_bmp_files
    grpc_float = [*classifier["grpc"], "--signature", "serving_default"]
    code, out, err = predict(*paths, *grpc_float, "--json")
    assert code == 0, err
    # The image size came from the server's model metadata: the note says so.
    assert err == GIF_BMP_NOTE
    assert_same_predictions(json.loads(out), expected_rows(classifier["model"], paths, pixels))
    # The text output equals the SavedModel run here, on the same float pixels.
    code, text, _ = predict(*paths, *grpc_float)
    local = [*classifier["saved-model"], "--signature", "serving_default"]
    assert code == 0 and text == predict(*paths, *local)[1]


@pytest.mark.parametrize("backend", ["saved-model", "rest", "grpc"])
def test_gif_and_bmp_files_through_every_backend(classifier, gif_bmp_files, backend):
    paths, pixels = gif_bmp_files
    expected = expected_rows(classifier["model"], paths, pixels)
    for signature in ("serving_bytes", "serving_default"):
        code, out, err = predict(*paths, *classifier[backend], "--signature", signature, "--json")
        assert code == 0, err
        assert err == GIF_BMP_NOTE
        assert_same_predictions(json.loads(out), expected)


def test_image_size_option(classifier, gif_bmp_files, servers):
    paths, pixels = gif_bmp_files
    expected = expected_rows(classifier["model"], paths, pixels)
    version_dir, loaded = classifier["version_dir"], classifier["loaded"]
    # A server without model metadata: serving_default needs --image-size.
    blind = ["--grpc", servers("grpc", version_dir, loaded, service=_NoMetadataService),
             "--model-name", MODEL_NAME, "--signature", "serving_default", "--json"]
    code, out, err = predict(*paths, *blind)
    assert (code, out) == (1, "")
    assert err == ("keras-vit predict: error: serving_default through a server needs the "
                   "image size: the server gave no model metadata, so pass --image-size\n")
    for size in ("16,16,3", "16,16", "16x16"):
        code, out, err = predict(*paths, *blind, "--image-size", size)
        assert code == 0, err
        assert err == GIF_BMP_NOTE  # the note uses --image-size too
        assert_same_predictions(json.loads(out), expected)
    # serving_bytes needs no size, and without one there is no note to print.
    bytes_ = blind[:4] + ["--json"]
    code, out, err = predict(*paths, *bytes_)
    assert (code, err) == (0, "")
    assert_same_predictions(json.loads(out), expected)

    # A size the model does not take: decoded to it here, refused by the server.
    code, out, err = predict(*paths, *classifier["grpc"], "--signature", "serving_default",
                             "--image-size", "12,12")
    assert (code, out) == (1, "")
    assert "INVALID_ARGUMENT" in err and "images must be float32 [batch, 16, 16, 3]" in err, err
    assert err.startswith("keras-vit predict: resizing 3 of 3 images to 12x12")
    # A local SavedModel knows its size: --image-size changes nothing there.
    local = [*classifier["saved-model"], "--signature", "serving_default", "--json"]
    with_size = predict(*paths, *local, "--image-size", "12,12")
    assert with_size == predict(*paths, *local) and with_size[2] == GIF_BMP_NOTE
    assert_same_predictions(json.loads(with_size[1]), expected)
    usage = io.StringIO()
    with pytest.raises(SystemExit) as info, redirect_stderr(usage):
        cli.main(["predict", paths[0], *local, "--image-size", "0,16"])
    assert info.value.code == 2
    assert "argument --image-size: expected H,W or H,W,C, got '0,16'" in usage.getvalue()


# ------------------------------------------------------------ sequence export

SEQUENCE_SHAPE = (8, 16, 1)
BEAM_WIDTH = 3
#: The size comes from the SavedModel or from the servers' model metadata.
SEQUENCE_NOTE = "keras-vit predict: resizing 1 of 3 images to 8x16 (from 12x20)\n"


@pytest.fixture(scope="module")
def sequence_export(tmp_path_factory, servers):
    """A tiny image-to-sequence model (random weights), exported with its beam search
    and served three ways, and grey PNG files (one of another size)."""
    from keras_vit.models import image_to_sequence
    from pipelines.sequence.vocab import CharVocabulary
    from pipelines.serving.sequence import export_sequence_model

    vocab = CharVocabulary(tuple("0123456789"))
    keras.utils.set_random_seed(3)
    model = image_to_sequence("Ti/4", SEQUENCE_SHAPE, vocab.size, max_length=5,
                              decoder_layers=1, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)
    base = tmp_path_factory.mktemp("sequence_models")
    version_dir = export_sequence_model(model, vocab, MODEL_NAME, base, beam_width=BEAM_WIDTH,
                                        length_penalty=0.6, verify=False, verbose=False)
    loaded = tf.saved_model.load(str(version_dir))

    folder = tmp_path_factory.mktemp("strings")
    rng = np.random.default_rng(5)
    paths = []
    for index, size in enumerate((SEQUENCE_SHAPE[:2], (12, 20), SEQUENCE_SHAPE[:2])):
        path = folder / f"s{index}.png"
        path.write_bytes(_encode(rng.integers(0, 256, size, dtype=np.uint8), "PNG"))
        paths.append(str(path))
    return {
        "model": model, "vocab": vocab, "paths": paths, "version_dir": version_dir,
        "loaded": loaded,
        "saved-model": ["--saved-model", str(version_dir)],
        "rest": ["--server", servers("rest", version_dir, loaded, handler=_SequenceRestHandler),
                 "--model-name", MODEL_NAME],
        "grpc": ["--grpc", servers("grpc", version_dir, loaded), "--model-name", MODEL_NAME],
    }


def keras_texts(sequence_export):
    """(text, score) per file: Keras beam search on PIL-decoded pixels, in this process."""
    from test_sequence_job import decode

    pixels = []
    for path in sequence_export["paths"]:
        image = np.asarray(Image.open(path))[..., None]
        if image.shape != SEQUENCE_SHAPE:
            image = resize_pixels(image, SEQUENCE_SHAPE[:2]).numpy()
        pixels.append(image.astype(np.float32))
    pixels = np.stack(pixels)
    tokens, scores = decode(sequence_export["model"], pixels, "beam", beam_width=BEAM_WIDTH)
    return [(sequence_export["vocab"].decode(row), float(score))
            for row, score in zip(tokens, scores)]


def test_sequence_export_through_rest_and_grpc_prints_the_saved_model_texts(sequence_export):
    paths = sequence_export["paths"]
    results = {backend: predict(*paths, *sequence_export[backend])
               for backend in ("saved-model", "rest", "grpc")}
    assert {b: r[0] for b, r in results.items()} == dict.fromkeys(results, 0), results
    assert {b: r[2] for b, r in results.items()} == dict.fromkeys(results, SEQUENCE_NOTE)
    local = results["saved-model"][1]
    assert results["rest"][1] == local and results["grpc"][1] == local
    lines = local.splitlines()
    assert lines[::2] == paths
    expected = keras_texts(sequence_export)
    assert any(text for text, _ in expected), "the model reads nothing: a vacuous comparison"
    for line, (text, score) in zip(lines[1::2], expected):
        assert line.startswith(f"  text: {text}  (score "), (line, text)
        assert float(line.rsplit(" ", 1)[1].rstrip(")")) == pytest.approx(score, abs=1e-3)
    # The float signature decodes on the client and reads the same through a server.
    for backend in ("rest", "grpc"):
        code, out, err = predict(*paths, *sequence_export[backend], "--signature",
                                 "serving_default")
        assert (code, out, err) == (0, local, SEQUENCE_NOTE)


def test_sequence_export_json_is_the_same_on_every_backend(sequence_export):
    paths = sequence_export["paths"]
    outputs = []
    for backend in ("saved-model", "rest", "grpc"):
        code, out, err = predict(*paths, *sequence_export[backend], "--json")
        assert (code, err) == (0, SEQUENCE_NOTE), err
        outputs.append(out)
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    rows = json.loads(outputs[0])
    assert [sorted(row) for row in rows] == [["image", "score", "text"]] * len(paths)
    assert [row["image"] for row in rows] == paths
    # The JSON carries what the text output prints.
    lines = predict(*paths, *sequence_export["saved-model"])[1].splitlines()
    assert [f"  text: {row['text']}  (score {row['score']:.4f})" for row in rows] == lines[1::2]
    served = sequence_export["loaded"].signatures["serving_bytes"](
        images_bytes=tf.constant([pathlib.Path(p).read_bytes() for p in paths]))
    assert [row["text"] for row in rows] == [t.decode() for t in served["text"].numpy()]
    np.testing.assert_array_equal([row["score"] for row in rows], served["scores"].numpy())


# ------------------------------------------------------------------- bugs


@pytest.fixture(scope="module")
def grey_classifier(tmp_path_factory):
    """A one-channel classifier (like the digits model, 8x8x1) exported without names."""
    model = make_tiny_trained_model((16, 16, 1))
    base = tmp_path_factory.mktemp("grey_savedmodels")
    version_dir = export.export_model(model, MODEL_NAME, base, verify=False, verbose=False)
    return model, version_dir


# One-channel models (the digits classifier, every image-to-sequence model) read
# GIF and BMP files too: TF's decoders for those convert only to RGB.
@pytest.mark.parametrize("signature", ["serving_bytes", "serving_default"])
def test_one_channel_model_reads_gif_and_bmp_files(grey_classifier, tmp_path, signature):
    model, version_dir = grey_classifier
    rng = np.random.default_rng(8)
    paths, pixels = [], []
    for fmt in ("GIF", "BMP"):
        grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        path = tmp_path / f"grey.{fmt.lower()}"
        path.write_bytes(_encode(grey, fmt))
        paths.append(str(path))
        pixels.append(np.asarray(Image.open(path).convert("L"), np.float32)[..., None])
    code, out, err = predict(*paths, "--saved-model", str(version_dir), "--signature",
                             signature, "--json")
    assert code == 0, err
    probabilities = keras_probabilities(model, np.stack(pixels))
    for row, expected in zip(json.loads(out), probabilities):
        assert row["predictions"][0]["label"] == str(int(np.argmax(expected)))
        assert row["predictions"][0]["score"] == pytest.approx(float(expected.max()), abs=1e-2)
