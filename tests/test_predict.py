"""Tests of the `keras-vit predict` clients (pipelines/predict.py, pipelines/serving/).

One export of the tiny trained model (from tests/test_export.py) is served three
ways: loaded locally (`--saved-model`), behind a stdlib HTTP server that speaks TF
Serving's REST predict API, and behind a gRPC PredictionService; all three must
print the same top-k labels.
"""

import base64
import contextlib
import json
import pathlib
import re
import socket
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from test_export import CLASS_NAMES, IMAGE_SHAPE, make_tiny_trained_model

from pipelines import export, predict
from pipelines.serving_checks import short_error

MODEL_NAME = "tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An exported model (no fresh-process verification: test_export covers it)."""
    model = make_tiny_trained_model()
    base = tmp_path_factory.mktemp("savedmodels")
    version_dir = export.export_model(
        model, MODEL_NAME, base, class_names=CLASS_NAMES, top_k=3, verify=False, verbose=False
    )
    return model, version_dir, tf.saved_model.load(str(version_dir))


def _signature_def_map(version_dir):
    """The SignatureDefMap TF Serving reports as model metadata, read from saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in saved_model.meta_graphs[0].signature_def.items():
        signatures.signature_def[name].CopyFrom(signature)
    return signatures


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A PNG at the model size, a larger JPEG and a grey PNG, written as files."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    images = {
        "a.png": tf.io.encode_png(rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)),
        "b.jpg": tf.io.encode_jpeg(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)),
        "c.png": tf.io.encode_png(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)),
    }
    paths = []
    for name, data in images.items():
        paths.append(str(folder / name))
        (folder / name).write_bytes(data.numpy())
    return paths


def _run_signature(loaded, signature_name, inputs):
    """Call a signature the way the model server does; InvalidArgumentError propagates."""
    function = loaded.signatures[signature_name]
    return {k: v.numpy() for k, v in function(**inputs).items()}


# ------------------------------------------------------------- stand-in servers


class _RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST predict API (row format), answered by the loaded SavedModel."""

    def do_POST(self):
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/\d+)?:predict", self.path)
        if not match or match.group(1) != MODEL_NAME:
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature_name = body.get("signature_name", "serving_default")
        signature = self.server.loaded.signatures[signature_name]
        ((input_name, spec),) = signature.structured_input_signature[1].items()
        values = [v["b64"] if isinstance(v, dict) else v for v in body["instances"]]
        if spec.dtype == tf.string:
            values = [base64.b64decode(v) for v in values]
            tensor = tf.constant(values, tf.string, shape=[len(values)])
        else:
            tensor = tf.constant(np.asarray(values, np.float32).reshape(-1, *spec.shape[1:]))
        try:
            outputs = _run_signature(self.server.loaded, signature_name, {input_name: tensor})
        except tf.errors.InvalidArgumentError as error:
            return self._reply(400, {"error": short_error(error.message)})
        rows = [
            {key: _json_value(value[i]) for key, value in outputs.items()}
            for i in range(len(values))
        ]
        self._reply(200, {"predictions": rows})

    def do_GET(self):
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/\d+)?/metadata", self.path)
        if not match or match.group(1) != MODEL_NAME:
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        # TF Serving prints protos with their field names, int64 as strings.
        signatures = json_format.MessageToDict(
            _signature_def_map(self.server.version_dir), preserving_proto_field_name=True
        )
        spec = {"name": MODEL_NAME, "version": "1", "signature_name": ""}
        self._reply(200, {"model_spec": spec, "metadata": {"signature_def": signatures}})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _json_value(array):
    if array.dtype == object:
        return [v.decode() for v in array.tolist()]
    return array.tolist()


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's gRPC Predict, answered by the loaded SavedModel."""

    def __init__(self, loaded, version_dir):
        self.loaded = loaded
        self.version_dir = version_dir

    def GetModelMetadata(self, request, context):
        if request.model_spec.name != MODEL_NAME:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable {request.model_spec.name}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.metadata["signature_def"].Pack(_signature_def_map(self.version_dir))
        return response

    def Predict(self, request, context):
        if request.model_spec.name != MODEL_NAME:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable {request.model_spec.name}")
        signature_name = request.model_spec.signature_name or "serving_default"
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        try:
            outputs = _run_signature(self.loaded, signature_name, inputs)
        except tf.errors.InvalidArgumentError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, short_error(error.message))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response


@pytest.fixture(scope="module")
def rest_server(served):
    server = HTTPServer(("127.0.0.1", 0), _RestHandler)
    server.loaded, server.version_dir = served[2], served[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def grpc_server(served):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(served[2], served[1]), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def run_cli(capsys, *argv):
    code = predict.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------- end to end


@pytest.mark.slow
def test_saved_model_prints_the_models_top_k(served, image_files, capsys):
    model, version_dir, _ = served
    code, out, err = run_cli(capsys, *image_files, "--saved-model", str(version_dir))
    assert code == 0, err
    blocks = out.strip().split("\n")
    assert blocks[0] == image_files[0] and len(blocks) == 3 * (1 + 3)
    # The first file is at the model size: its printed ranking is the model's.
    pixels = tf.io.decode_png(pathlib.Path(image_files[0]).read_bytes()).numpy()[None]
    probabilities = tf.nn.softmax(model(pixels.astype(np.float32))).numpy()[0]
    best = np.argsort(-probabilities)[:3]
    width = max(len(CLASS_NAMES[c]) for c in best)
    expected = [
        f"  {rank}. {CLASS_NAMES[c]:<{width}}  {probabilities[c]:.4f}"
        for rank, c in enumerate(best, 1)
    ]
    assert blocks[1:4] == expected


#: image_files: a.png is at the model size, b.jpg is 30x20 RGB, c.png is 16x16 grey.
CONVERSION_NOTE = (
    "keras-vit predict: resizing 1 of 3 images to 16x16 (from 30x20); "
    "converting 1 of 3 images from 1 to 3 channels (grey to RGB)"
)


@pytest.mark.slow
def test_rest_and_grpc_print_the_same_as_saved_model(
    served, image_files, rest_server, grpc_server, capsys
):
    version_dir = str(served[1])
    local = run_cli(capsys, *image_files, "--saved-model", version_dir)
    rest = run_cli(capsys, *image_files, "--server", rest_server, "--model-name", MODEL_NAME)
    grpc_ = run_cli(capsys, *image_files, "--grpc", grpc_server, "--model-name", MODEL_NAME)
    assert local[0] == rest[0] == grpc_[0] == 0, (rest[2], grpc_[2])
    assert local[1] == rest[1] == grpc_[1]
    # The model size comes from the SavedModel, or the servers' model metadata.
    assert local[2] == rest[2] == grpc_[2] == CONVERSION_NOTE + "\n"


@pytest.mark.slow
def test_predict_says_in_one_line_what_it_resizes_and_converts(served, image_files, capsys):
    saved_model = ["--saved-model", str(served[1])]
    code, out, err = run_cli(capsys, *image_files, *saved_model)
    assert code == 0 and err.splitlines() == [CONVERSION_NOTE]
    # The note changes nothing else: stdout is the per-file predictions.
    singles = [run_cli(capsys, path, *saved_model) for path in image_files]
    assert out == "".join(single[1] for single in singles)
    assert [single[2] for single in singles] == [
        "",
        "keras-vit predict: resizing 1 of 1 image to 16x16 (from 30x20)\n",
        "keras-vit predict: converting 1 of 1 image from 1 to 3 channels (grey to RGB)\n",
    ]
    code, out, err = run_cli(capsys, *image_files, *saved_model, "--json")
    assert code == 0 and err == CONVERSION_NOTE + "\n" and json.loads(out)


def test_conversion_note_counts_sizes_and_channels():
    shapes = [(30, 20, 3), (30, 20, 1), (8, 8, 4), (16, 16, 3), None]
    assert predict.conversion_note(shapes, (16, 16, 3)) == (
        "resizing 3 of 5 images to 16x16 (from 30x20 [2], 8x8 [1]); "
        "converting 2 of 5 images from 1 [1], 4 [1] to 3 channels (grey/RGBA to RGB)"
    )
    assert predict.conversion_note([(16, 16, 3), None], (16, 16, 3)) is None


@pytest.mark.slow
def test_float_signature_and_options_agree(served, image_files, rest_server, capsys):
    version_dir = str(served[1])
    bytes_json = run_cli(capsys, *image_files, "--saved-model", version_dir, "--json")
    float_signature = ["--signature", "serving_default", "--json"]
    float_json = run_cli(capsys, *image_files, "--saved-model", version_dir, *float_signature)
    rest = ["--server", rest_server, "--model-name", MODEL_NAME]
    rest_float = run_cli(capsys, *image_files, *rest, "--image-size", "16,16", *float_signature)
    # Without --image-size, the size comes from the server's model metadata.
    rest_metadata = run_cli(capsys, *image_files, *rest, *float_signature)
    results = (bytes_json, float_json, rest_float, rest_metadata)
    assert [result[0] for result in results] == [0, 0, 0, 0], [r[2] for r in results]
    parsed = [json.loads(result[1]) for result in results]
    for rows in parsed[1:]:
        for row, reference in zip(rows, parsed[0]):
            assert [p["label"] for p in row["predictions"]] == [
                p["label"] for p in reference["predictions"]
            ]
            np.testing.assert_allclose(
                [p["score"] for p in row["predictions"]],
                [p["score"] for p in reference["predictions"]],
                atol=1e-6,
            )
    code, out, _ = run_cli(capsys, image_files[0], "--saved-model", version_dir, "--top-k", "1")
    assert code == 0 and len(out.strip().splitlines()) == 2


# ------------------------------------------------------------------- errors


@pytest.mark.slow
def test_truncated_file_is_a_clear_error_on_every_backend(
    served, tmp_path, rest_server, grpc_server, image_files, capsys
):
    bad = tmp_path / "truncated.png"
    bad.write_bytes(pathlib.Path(image_files[0]).read_bytes()[:60])  # PNG header, then cut
    for backend in (
        ["--saved-model", str(served[1])],
        ["--server", rest_server, "--model-name", MODEL_NAME],
        ["--grpc", grpc_server, "--model-name", MODEL_NAME],
    ):
        code, _, err = run_cli(capsys, str(bad), *backend)
        assert code == 1
        assert err.startswith("keras-vit predict: error:") and "Invalid PNG" in err, err
        assert "INVALID_ARGUMENT" in err or "HTTP 400" in err, err
        # The server survives and answers the next good request.
        code, out, _ = run_cli(capsys, image_files[0], *backend)
        assert code == 0 and out.startswith(image_files[0])


@pytest.mark.slow
def test_unknown_model_and_unreachable_server(rest_server, grpc_server, image_files, capsys):
    code, _, err = run_cli(capsys, image_files[0], "--server", rest_server, "--model-name", "nope")
    assert code == 1 and "HTTP 404" in err
    code, _, err = run_cli(capsys, image_files[0], "--grpc", grpc_server, "--model-name", "nope")
    assert code == 1 and "NOT_FOUND" in err
    with socket_closed_port() as port:
        server = ["--server", f"http://127.0.0.1:{port}", "--model-name", "x", "--timeout", "5"]
        code, _, err = run_cli(capsys, image_files[0], *server)
    assert code == 1 and "cannot reach" in err


@contextlib.contextmanager
def silent_server():
    """A localhost port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "backend, extra, endpoint",
    [
        ("--server", [], "http://127.0.0.1:{port}/v1/models/x/metadata"),
        ("--server", ["--image-size", "16,16"], "http://127.0.0.1:{port}/v1/models/x:predict"),
        ("--grpc", [], "gRPC 127.0.0.1:{port}"),
        ("--grpc", ["--image-size", "16,16"], "gRPC 127.0.0.1:{port}"),
    ],
    ids=["rest-metadata", "rest-predict", "grpc-metadata", "grpc-predict"],
)
def test_silent_server_times_out_naming_the_url_and_timeout(
    image_files, capsys, backend, extra, endpoint
):
    with silent_server() as port:
        address = f"http://127.0.0.1:{port}" if backend == "--server" else f"127.0.0.1:{port}"
        argv = [image_files[0], backend, address, "--model-name", "x", "--timeout", "0.5"]
        code, out, err = run_cli(capsys, *argv, *extra)
    assert code == 1 and out == ""
    message = (
        f"keras-vit predict: error: no answer from {endpoint.format(port=port)} within "
        "--timeout 0.5 s: is the model server up and the model loaded? Raise --timeout for "
        "a slow server."
    )
    assert err.splitlines() == [message]


def test_timeout_must_be_positive(image_files, capsys):
    with pytest.raises(SystemExit) as info:
        predict.main([image_files[0], "--server", "http://127.0.0.1:1", "--model-name", "x",
                      "--timeout", "0"])
    assert info.value.code == 2
    assert "--timeout must be > 0 seconds, got 0" in capsys.readouterr().err


def socket_closed_port():
    """A context manager yielding a localhost port with nothing listening."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield port

    return closed()


@pytest.mark.parametrize("kind, reason", [("missing", "No such file or directory"),
                                          ("folder", "Is a directory")])
def test_unreadable_image_path_is_named_before_sending(tmp_path, image_files, capsys, kind,
                                                       reason):
    path = tmp_path / "scans"
    if kind == "folder":
        path.mkdir()
    server = ["--server", "http://127.0.0.1:1", "--model-name", "x"]
    code, _, err = run_cli(capsys, image_files[0], str(path), *server)
    assert code == 1
    assert f"{path}: cannot read it as an image file ({reason})" in err


def test_non_image_file_is_refused_before_sending(tmp_path, image_files, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("definitely not a PNG")
    server = ["--server", "http://127.0.0.1:1", "--model-name", "x"]
    code, _, err = run_cli(capsys, image_files[0], str(notes), *server)
    assert code == 1 and f"{notes} is not a JPEG, PNG" in err
    assert [predict.image_format(pathlib.Path(p).read_bytes()) for p in image_files] == [
        "PNG",
        "JPEG",
        "PNG",
    ]


def test_cli_requires_a_model_name_for_servers(image_files, capsys):
    with pytest.raises(SystemExit):
        predict.main([image_files[0], "--server", "http://127.0.0.1:1"])
    assert "--model-name is required" in capsys.readouterr().err


def test_cli_help_documents_every_option():
    text = predict.build_parser().format_help()
    options = "--server --grpc --saved-model --model-name --signature --image-size --top-k"
    for option in (options + " --timeout --json").split():
        assert option in text, option


# ----------------------------------------------------- request/response helpers


def test_build_rest_request_sends_files_as_b64():
    body = predict.build_rest_request([b"\x89PNG\x00\xff", b"jpeg"])
    assert body["signature_name"] == "serving_bytes"
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [b"\x89PNG\x00\xff", b"jpeg"]
    json.dumps(body)  # serialisable as is
    floats = predict.build_rest_request(np.zeros((1, 2, 2, 3)), "serving_default")
    assert floats["instances"] == np.zeros((1, 2, 2, 3)).tolist()


def test_parse_rest_response_row_columnar_and_error():
    row = {"top_k_classes": [2, 0], "top_k_scores": [0.75, 0.25], "top_k_labels": ["bird", "cat"]}
    rows = {"predictions": [row]}
    outputs = predict.parse_rest_response(json.dumps(rows))
    assert outputs["top_k_classes"].tolist() == [[2, 0]]
    assert predict.top_k_predictions(outputs) == [[("bird", 0.75), ("cat", 0.25)]]
    columnar = {"outputs": {"top_k_classes": [[1]], "top_k_scores": [[1.0]]}}
    columns = predict.parse_rest_response(columnar)
    assert predict.top_k_predictions(columns) == [[("1", 1.0)]]
    with pytest.raises(predict.PredictError, match="bad pixels"):
        predict.parse_rest_response({"error": "bad pixels"})


def test_grpc_request_and_response_round_trip():
    request = predict.build_grpc_request([b"a", b"bc"], "vit")
    assert request.model_spec.name == "vit"
    assert request.model_spec.signature_name == "serving_bytes"
    proto = request.inputs["images_bytes"]
    assert proto.dtype == tf.string.as_datatype_enum
    assert tf.make_ndarray(proto).tolist() == [b"a", b"bc"]
    response = predict_pb2.PredictResponse()
    response.outputs["top_k_classes"].CopyFrom(tf.make_tensor_proto(np.array([[3]], np.int32)))
    response.outputs["top_k_scores"].CopyFrom(tf.make_tensor_proto(np.array([[0.5]], np.float32)))
    response.outputs["top_k_labels"].CopyFrom(tf.make_tensor_proto(np.array([[b"fish"]])))
    outputs = predict.parse_grpc_response(response)
    assert predict.top_k_predictions(outputs) == [[("fish", 0.5)]]


def test_format_predictions():
    text = predict.format_predictions(["x.png"], [[("cat", 0.91234), ("bird", 0.05)]])
    assert text == "x.png\n  1. cat   0.9123\n  2. bird  0.0500"
