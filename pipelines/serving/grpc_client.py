"""TF Serving's gRPC API through tensorflow-serving-api: Predict and GetModelMetadata.

Example:
    >>> grpc_predict("localhost:8500", "vit", read_images(["cat.jpg"]))["top_k_labels"]
"""

import contextlib

import numpy as np

from pipelines.serving.contract import INPUT_NAMES, SERVING_BYTES, SERVING_DEFAULT
from pipelines.serving.errors import PredictError, no_answer

GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def build_grpc_request(images, model_name, signature_name=SERVING_BYTES):
    """A `PredictRequest` proto for the signature.

    Example:
        >>> build_grpc_request([png_bytes], "vit").inputs["images_bytes"].dtype
        7
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    if signature_name not in INPUT_NAMES:
        raise ValueError(f"Unknown signature {signature_name!r}; use one of {sorted(INPUT_NAMES)}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if signature_name == SERVING_BYTES:
        value = np.array(list(images), dtype=object)
        proto = tf.make_tensor_proto(value, dtype=tf.string, shape=[len(value)])
    else:
        proto = tf.make_tensor_proto(np.asarray(images, np.float32))
    request.inputs[INPUT_NAMES[signature_name]].CopyFrom(proto)
    return request


def parse_grpc_response(response):
    """`PredictResponse` -> `{output_name: np.ndarray}`.

    Example:
        >>> parse_grpc_response(response)["top_k_classes"].shape
        (1, 5)
    """
    import tensorflow as tf

    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


@contextlib.contextmanager
def _stub(target):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _error(error, target, timeout):
    import grpc

    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return no_answer(f"gRPC {target}", timeout)
    return PredictError(f"gRPC {error.code().name} from {target}: {error.details()}")


def grpc_predict(target, model_name, images, signature_name=SERVING_BYTES, timeout=60.0):
    """Call `PredictionService/Predict` on `target` (`host:port`); return the outputs.

    Example:
        >>> grpc_predict("localhost:8500", "vit", read_images(["cat.jpg"]))
    """
    import grpc

    request = build_grpc_request(images, model_name, signature_name)
    with _stub(target) as stub:
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise _error(error, target, timeout) from None
    return parse_grpc_response(response)


def grpc_image_shape(target, model_name, timeout=60.0):
    """`(H, W, C)` of the served model's `serving_default` input (GetModelMetadata).

    Returns None when the server reports an error for the metadata (the predict
    request then reports it); a server that does not answer raises PredictError.

    Example:
        >>> grpc_image_shape("localhost:8500", "vit")
        (32, 32, 3)
    """
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model_name
    with _stub(target) as stub:
        try:
            response = stub.GetModelMetadata(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise _error(error, target, timeout) from None
            return None
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signatures):
        return None
    signature = signatures.signature_def.get(SERVING_DEFAULT)
    tensor = signature.inputs.get(INPUT_NAMES[SERVING_DEFAULT]) if signature else None
    sizes = [dim.size for dim in tensor.tensor_shape.dim] if tensor else []
    return tuple(sizes[1:]) if len(sizes) == 4 and min(sizes[1:]) > 0 else None
