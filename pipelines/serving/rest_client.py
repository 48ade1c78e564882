"""TF Serving's REST API from the standard library: predict and model metadata.

* `POST {server}/v1/models/{name}:predict` with
  `{"signature_name": "serving_bytes", "instances": [{"b64": "..."}]}`;
* `GET {server}/v1/models/{name}/metadata` for the input image size.

Example:
    >>> rest_predict("http://localhost:8501", "vit", read_images(["cat.jpg"]))["top_k_labels"]
"""

import base64
import json
import urllib.error
import urllib.request

import numpy as np

from pipelines.serving.contract import INPUT_NAMES, SERVING_BYTES, SERVING_DEFAULT
from pipelines.serving.errors import PredictError, no_answer


class HTTPStatusError(PredictError):
    """The server answered with an HTTP error status."""


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
    if signature_name not in INPUT_NAMES:
        raise ValueError(f"Unknown signature {signature_name!r}; use one of {sorted(INPUT_NAMES)}")
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


def _to_array(values):
    values = [
        [_from_json_value(v) for v in row] if isinstance(row, list) else _from_json_value(row)
        for row in values
    ]
    array = np.asarray(values)
    if array.dtype.kind == "U":
        array = array.astype(object)
    return array


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


def _http(request, timeout):
    """Send `request`; the response body, or PredictError naming the URL.

    `timeout` bounds the connection and each read: a server that accepts the
    connection but never answers ends in `no_answer`, not in a bare "timed out".
    """
    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            message = body
        raise HTTPStatusError(f"HTTP {error.code} from {url}: {message}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise no_answer(url, timeout) from None
        raise PredictError(f"cannot reach {url}: {error.reason}") from None
    except TimeoutError:  # socket.timeout is TimeoutError
        raise no_answer(url, timeout) from None
    except ConnectionError as error:  # e.g. http.client.RemoteDisconnected
        raise PredictError(f"{url} closed the connection without an answer: {error}") from None


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
    return parse_rest_response(_http(request, timeout))


def rest_image_shape(server, model_name, timeout=60.0):
    """`(H, W, C)` of the served model's `serving_default` input, from its metadata.

    Returns None when the server has no such metadata (an HTTP error: the predict
    request then reports the problem); a server that does not answer raises.

    Example:
        >>> rest_image_shape("http://localhost:8501", "vit")
        (32, 32, 3)
    """
    url = f"{server.rstrip('/')}/v1/models/{model_name}/metadata"
    try:
        body = json.loads(_http(urllib.request.Request(url, method="GET"), timeout))
        signatures = body["metadata"]["signature_def"]["signature_def"]
        dims = signatures[SERVING_DEFAULT]["inputs"][INPUT_NAMES[SERVING_DEFAULT]]
        sizes = [int(dim["size"]) for dim in dims["tensor_shape"]["dim"]]
    except (HTTPStatusError, ValueError, KeyError, TypeError):
        return None
    return tuple(sizes[1:]) if len(sizes) == 4 and min(sizes[1:]) > 0 else None
