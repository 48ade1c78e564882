"""Warm-up requests: PredictionLog records TF Serving replays before serving a version.

Example:
    >>> write_warmup_requests("/tmp/vit/1", "vit", np.zeros((2, 32, 32, 3), np.float32))
    >>> len(read_warmup_requests("/tmp/vit/1/assets.extra/tf_serving_warmup_requests"))
    4
"""

import pathlib

import numpy as np

from pipelines.serving.contract import (
    ASSETS_EXTRA,
    BYTES_INPUT,
    IMAGES_INPUT,
    SERVING_BYTES,
    SERVING_DEFAULT,
    WARMUP_FILENAME,
)
from pipelines.serving.samples import encode_png


def _warmup_batches(images):
    """(signature, input name, batch) for both signatures, batch 1 and the full batch."""
    import tensorflow as tf

    encoded = encode_png(images)
    if images.shape[-1] in (1, 3):
        # Warm the JPEG decoder too: real clients mostly send JPEGs.
        pixels = np.clip(np.rint(images[:1]), 0, 255).astype(np.uint8)
        encoded = encoded + [tf.io.encode_jpeg(pixels[0]).numpy()]
    batches = [(SERVING_DEFAULT, IMAGES_INPUT, images[:n]) for n in sorted({1, len(images)})]
    batches.append((SERVING_BYTES, BYTES_INPUT, np.array(encoded[:1], dtype=object)))
    batches.append((SERVING_BYTES, BYTES_INPUT, np.array(encoded, dtype=object)))
    return batches


def build_warmup_logs(model_name, images):
    """PredictionLog protos for both signatures, batch 1 and the full batch.

    Args:
        model_name: the served model name (`model_spec.name`).
        images: float32 `[N, H, W, C]` pixel images.

    Example:
        >>> logs = build_warmup_logs("vit", np.zeros((2, 32, 32, 3), np.float32))
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    logs = []
    for signature, input_name, batch in _warmup_batches(np.asarray(images, np.float32)):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(batch))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_requests(export_dir, model_name, images):
    """Write `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog).

    TF Serving replays these before it marks the version AVAILABLE, so the first
    real request does not pay for graph optimisation and kernel set-up.

    Example:
        >>> write_warmup_requests("/tmp/vit/1", "vit", images)
        PosixPath('/tmp/vit/1/assets.extra/tf_serving_warmup_requests')
    """
    import tensorflow as tf

    path = pathlib.Path(export_dir) / ASSETS_EXTRA / WARMUP_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in build_warmup_logs(model_name, images):
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path):
    """Parse a warm-up file into a list of PredictionLog protos.

    Example:
        >>> read_warmup_requests(path)[0].predict_log.request.model_spec.name
        'vit'
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
