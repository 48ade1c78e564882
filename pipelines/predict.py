"""Classify image files with an exported model: locally, over REST or over gRPC.

`keras-vit predict IMAGE... (--server URL | --grpc HOST:PORT | --saved-model DIR)`
sends the files as they are to the `serving_bytes` signature (decoding and
resizing happen inside the served graph) and prints the top-k labels per image in
the same format for all three back ends:

    cat.jpg
      1. cat           0.9312
      2. dog           0.0421

* REST: `POST {server}/v1/models/{name}:predict` with
  `{"signature_name": "serving_bytes", "instances": [{"b64": "..."}]}` (stdlib urllib).
* gRPC: `PredictionService/Predict` through tensorflow-serving-api's stub.
* `--saved-model`: `tf.saved_model.load(DIR).signatures[...]`, no server needed.

`--signature serving_default` decodes and resizes the files on the client instead
(same code as the graph) and sends float32 pixels; the image size then comes from
`--saved-model`, or `--image-size` for a server.

Example:
    keras-vit predict cat.jpg dog.png --server http://localhost:8501 --model-name vit
    keras-vit predict cat.jpg --grpc localhost:8500 --model-name vit --top-k 3
    keras-vit predict cat.jpg --saved-model savedmodels/vit/1
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
import urllib.error
import urllib.request

import numpy as np

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
INPUT_NAMES = {SERVING_DEFAULT: "images", SERVING_BYTES: "images_bytes"}
LABELS_OUTPUT = "top_k_labels"
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PredictError(RuntimeError):
    """The server (or the local model) rejected the request."""


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


# Leading bytes of the formats tf.io.decode_image reads (WebP: RIFF....WEBP).
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}


def image_format(data):
    """The format name of encoded image bytes ("JPEG", "PNG", ...), or None."""
    for name, prefixes in _SIGNATURES.items():
        if data.startswith(prefixes):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_images(paths):
    """Read image files as raw bytes (no decoding: the server does that).

    A file that is not an image at all is refused here, naming it; the server could
    only say that some image of the batch is bad. Truncated or corrupt images still
    get the server's INVALID_ARGUMENT.

    Example:
        >>> read_images(["cat.jpg"])[0][:3]
        b'\xff\xd8\xff'
    """
    images = []
    for path in paths:
        data = pathlib.Path(path).read_bytes()
        if image_format(data) is None:
            raise PredictError(f"{path} is not a JPEG, PNG, GIF, BMP or WebP file")
        images.append(data)
    return images


def decode_for_float_signature(images_bytes, image_shape):
    """Decode and resize files for `serving_default`: float32 `[N, H, W, C]`.

    Uses `pipelines.data.images.decode_image`, the same ops as `serving_bytes` and training.
    """
    import tensorflow as tf

    from pipelines.data.images import decode_image
    from pipelines.serving_checks import short_error

    try:
        decoded = [
            decode_image(tf.constant(data), tuple(image_shape)).numpy()
            for data in images_bytes
        ]
    except tf.errors.InvalidArgumentError as error:
        raise PredictError(f"cannot decode an image: {short_error(error.message)}") from None
    if not decoded:
        return np.zeros((0, *image_shape), np.float32)
    return np.stack(decoded).astype(np.float32)


def _signature_input(signature_name, images):
    """(input name, value) for a signature: bytes list or float32 pixel array."""
    if signature_name not in INPUT_NAMES:
        raise ValueError(f"Unknown signature {signature_name!r}; use one of {sorted(INPUT_NAMES)}")
    return INPUT_NAMES[signature_name], images


# --------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------


def build_rest_request(images, signature_name=SERVING_BYTES):
    """JSON body for TF Serving's REST predict API (row format, one named input).

    Args:
        images: list of encoded files (`serving_bytes`) or float32 `[N, H, W, C]`
            pixels (`serving_default`).
        signature_name: the signature to call.

    Example:
        >>> build_rest_request([b"\\x89PNG..."])
        {'signature_name': 'serving_bytes', 'instances': [{'b64': 'iVBORy4uLg=='}]}
    """
    _signature_input(signature_name, images)
    if signature_name == SERVING_BYTES:
        # Binary data goes as {"b64": ...}: TF Serving decodes it into a DT_STRING.
        instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in images]
    else:
        instances = np.asarray(images, np.float32).tolist()
    return {"signature_name": signature_name, "instances": instances}


def _from_json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


def parse_rest_response(body):
    """TF Serving REST predict response -> `{output_name: np.ndarray}` (batch first).

    Accepts the row format (`{"predictions": [{output: value, ...}, ...]}`) and the
    columnar one (`{"outputs": {output: [...]}}`); an `{"error": ...}` body raises
    PredictError.

    Example:
        >>> parse_rest_response({"predictions": [{"top_k_classes": [2], "top_k_scores": [0.9]}]})
        {'top_k_classes': array([[2]]), 'top_k_scores': array([[0.9]])}
    """
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    if "error" in body:
        raise PredictError(body["error"])
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, dict):
            raise PredictError("single unnamed output; expected the exported output names")
        return {key: _to_array(value) for key, value in outputs.items()}
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        raise PredictError(f"unexpected response: {str(body)[:200]}")
    if predictions and not isinstance(predictions[0], dict):
        raise PredictError("single unnamed output; expected the exported output names")
    keys = predictions[0].keys() if predictions else ()
    return {key: _to_array([row[key] for row in predictions]) for key in keys}


def _to_array(values):
    values = [
        [_from_json_value(v) for v in row] if isinstance(row, list) else _from_json_value(row)
        for row in values
    ]
    array = np.asarray(values)
    if array.dtype.kind == "U":
        array = array.astype(object)
    return array


def rest_predict(server, model_name, images, signature_name=SERVING_BYTES, timeout=60.0):
    """POST the images to `{server}/v1/models/{model_name}:predict`; return the outputs.

    Example:
        >>> rest_predict("http://localhost:8501", "vit", read_images(["cat.jpg"]))
    """
    url = f"{server.rstrip('/')}/v1/models/{model_name}:predict"
    data = json.dumps(build_rest_request(images, signature_name)).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_rest_response(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("error", body)
        except ValueError:
            message = body
        raise PredictError(f"HTTP {error.code} from {url}: {message}") from None
    except urllib.error.URLError as error:
        raise PredictError(f"cannot reach {url}: {error.reason}") from None


# --------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------


def build_grpc_request(images, model_name, signature_name=SERVING_BYTES):
    """A `PredictRequest` proto for the signature.

    Example:
        >>> build_grpc_request([png_bytes], "vit").inputs["images_bytes"].dtype
        7
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    input_name, value = _signature_input(signature_name, images)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if signature_name == SERVING_BYTES:
        value = np.array(list(value), dtype=object)
        proto = tf.make_tensor_proto(value, dtype=tf.string, shape=[len(value)])
    else:
        proto = tf.make_tensor_proto(np.asarray(value, np.float32))
    request.inputs[input_name].CopyFrom(proto)
    return request


def parse_grpc_response(response):
    """`PredictResponse` -> `{output_name: np.ndarray}`."""
    import tensorflow as tf

    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def grpc_predict(target, model_name, images, signature_name=SERVING_BYTES, timeout=60.0):
    """Call `PredictionService/Predict` on `target` (`host:port`); return the outputs."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(
                build_grpc_request(images, model_name, signature_name), timeout=timeout
            )
        except grpc.RpcError as error:
            message = f"gRPC {error.code().name} from {target}: {error.details()}"
            raise PredictError(message) from None
    return parse_grpc_response(response)


# --------------------------------------------------------------------------------------
# Local SavedModel
# --------------------------------------------------------------------------------------


def saved_model_image_shape(saved_model_dir):
    """`(H, W, C)` of a SavedModel's `serving_default` input."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    spec = loaded.signatures[SERVING_DEFAULT].structured_input_signature[1]
    return tuple(int(d) for d in spec[INPUT_NAMES[SERVING_DEFAULT]].shape[1:])


def local_predict(saved_model_dir, images, signature_name=SERVING_BYTES, loaded=None):
    """Run a signature of a SavedModel folder in this process; return the outputs."""
    import tensorflow as tf

    from pipelines.serving_checks import short_error

    loaded = loaded or tf.saved_model.load(str(saved_model_dir))
    if signature_name not in loaded.signatures:
        raise PredictError(f"{saved_model_dir} has no signature {signature_name!r}")
    input_name, value = _signature_input(signature_name, images)
    if signature_name == SERVING_BYTES:
        tensor = tf.constant(list(value), dtype=tf.string, shape=[len(value)])
    else:
        tensor = tf.constant(np.asarray(value, np.float32))
    try:
        outputs = loaded.signatures[signature_name](**{input_name: tensor})
    except tf.errors.InvalidArgumentError as error:
        raise PredictError(f"INVALID_ARGUMENT: {short_error(error.message)}") from None
    return {key: value.numpy() for key, value in outputs.items()}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _label(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def top_k_predictions(outputs, top_k=None):
    """Per image, `[(label, score), ...]` from the signature outputs.

    Labels come from `top_k_labels` when the model was exported with class names,
    else the class index. `top_k` truncates what the export returns.

    Example:
        >>> top_k_predictions({"top_k_classes": [[1, 0]], "top_k_scores": [[0.7, 0.3]]})
        [[('1', 0.7), ('0', 0.3)]]
    """
    classes = np.asarray(outputs["top_k_classes"])
    scores = np.asarray(outputs["top_k_scores"], np.float64)
    labels = outputs.get(LABELS_OUTPUT)
    results = []
    for i in range(len(classes)):
        names = labels[i] if labels is not None else classes[i]
        pairs = [(_label(name), float(score)) for name, score in zip(names, scores[i])]
        results.append(pairs[:top_k] if top_k else pairs)
    return results


def format_predictions(names, predictions):
    """Printable block: each image name, then its ranked `label  score` lines."""
    lines = []
    for name, pairs in zip(names, predictions):
        lines.append(str(name))
        width = max([len(label) for label, _ in pairs] + [1])
        for rank, (label, score) in enumerate(pairs, 1):
            lines.append(f"  {rank}. {label:<{width}}  {score:.4f}")
    return "\n".join(lines)


def predict(
    images,
    *,
    server=None,
    grpc_target=None,
    saved_model=None,
    model_name=None,
    signature_name=SERVING_BYTES,
    image_shape=None,
    timeout=60.0,
):
    """Send encoded `images` to exactly one back end; return the signature outputs.

    Args:
        images: list of encoded image files (bytes).
        server / grpc_target / saved_model: REST URL, gRPC `host:port` or a
            SavedModel folder; exactly one.
        model_name: served model name (REST/gRPC).
        signature_name: `serving_bytes` (files as they are) or `serving_default`
            (decoded here; needs `image_shape` for REST/gRPC).
        image_shape: `(H, W, C)` for `serving_default` through a server.

    Example:
        >>> predict(read_images(["cat.jpg"]), saved_model="savedmodels/vit/1")["top_k_labels"]
    """
    if sum(x is not None for x in (server, grpc_target, saved_model)) != 1:
        raise ValueError("Give exactly one of server, grpc_target or saved_model")
    if saved_model is None and not model_name:
        raise ValueError("model_name is required for a server")
    loaded = None
    if signature_name == SERVING_DEFAULT:
        if saved_model is not None:
            import tensorflow as tf

            loaded = tf.saved_model.load(str(saved_model))
            spec = loaded.signatures[SERVING_DEFAULT].structured_input_signature[1]
            image_shape = tuple(int(d) for d in spec[INPUT_NAMES[SERVING_DEFAULT]].shape[1:])
        if image_shape is None:
            raise ValueError("serving_default through a server needs image_shape (--image-size)")
        images = decode_for_float_signature(images, image_shape)
    if server is not None:
        return rest_predict(server, model_name, images, signature_name, timeout)
    if grpc_target is not None:
        return grpc_predict(grpc_target, model_name, images, signature_name, timeout)
    return local_predict(saved_model, images, signature_name, loaded=loaded)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parse_image_size(value):
    parts = [int(p) for p in value.replace("x", ",").split(",")]
    if len(parts) == 2:
        parts.append(3)
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or H,W,C, got {value!r}")
    return tuple(parts)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit predict",
        description="Classify image files with an exported model through TF Serving (REST "
        "or gRPC) or a local SavedModel folder, printing the top-k labels per image.",
        epilog="Example: keras-vit predict cat.jpg --server http://localhost:8501 "
        "--model-name vit",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="JPEG/PNG/GIF/BMP files, sent as they are"
    )
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument(
        "--server", metavar="URL", help="TF Serving REST endpoint, e.g. http://localhost:8501"
    )
    backend.add_argument(
        "--grpc", metavar="HOST:PORT", help="TF Serving gRPC endpoint, e.g. localhost:8500"
    )
    backend.add_argument(
        "--saved-model",
        metavar="DIR",
        help="run a SavedModel version folder in this process, e.g. savedmodels/vit/1",
    )
    parser.add_argument(
        "--model-name", default=None, help="served model name (required with --server/--grpc)"
    )
    parser.add_argument(
        "--signature",
        default=SERVING_BYTES,
        choices=sorted(INPUT_NAMES),
        help="serving_bytes sends the files (default); serving_default decodes and resizes "
        "them here and sends float32 pixels",
    )
    parser.add_argument(
        "--image-size",
        type=_parse_image_size,
        default=None,
        metavar="H,W[,C]",
        help="model image size, for --signature serving_default through a server",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="labels to print per image (default: all that the export returns)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="request timeout, seconds")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON [{image, predictions: [{label, score}]}] instead of text",
    )
    return parser


def main(argv=None):
    """`keras-vit predict ...`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.saved_model is None and not args.model_name:
        parser.error("--model-name is required with --server or --grpc")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    try:
        outputs = predict(
            read_images(args.images),
            server=args.server,
            grpc_target=args.grpc,
            saved_model=args.saved_model,
            model_name=args.model_name,
            signature_name=args.signature,
            image_shape=args.image_size,
            timeout=args.timeout,
        )
        predictions = top_k_predictions(outputs, args.top_k)
    except (PredictError, ValueError, OSError) as error:
        print(f"keras-vit predict: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        rows = [
            {"image": name, "predictions": [{"label": lab, "score": sc} for lab, sc in pairs]}
            for name, pairs in zip(args.images, predictions)
        ]
        print(json.dumps(rows, indent=2))
    else:
        print(format_predictions(args.images, predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
