"""Export a trained Keras image classifier as a TensorFlow Serving SavedModel.

`export_model()` (called by the training job) and `keras-vit export` (for a saved
`.keras` file) write `savedmodels/<name>/<version>/` in the layout that
`tensorflow_model_server` polls:

    savedmodels/
      models.config                  ModelServerConfig listing every exported model
      <name>/
        1/ 2/ ...                    integer versions, never rewritten in place
          saved_model.pb
          variables/
          assets.extra/
            tf_serving_warmup_requests   PredictionLog records replayed at load
            keras_vit_export.json        image shape, class names, top-k (for clients)

Two signatures are exported with `keras.export.ExportArchive`:

* `serving_default`: `images` float32 `[batch, H, W, C]` in raw pixel scale
  [0, 255] (the model does its own rescaling).
* `serving_bytes`: `images_bytes` string `[batch]` of encoded JPEG/PNG/GIF/BMP
  files, decoded, resized and cast inside the graph exactly like the training
  pipeline, so REST clients can send `{"b64": ...}` files as they are.

Both return float32 `probabilities [batch, K]`, int32 `top_k_classes [batch, k]`,
float32 `top_k_scores [batch, k]` and, with class names, string
`top_k_labels [batch, k]`.

A version is written into a hidden `.tmp-<uuid>` sibling folder (TF Serving ignores
non-numeric folders), checked for ops a stock model server lacks, verified in a
fresh process (`verify_export`) and only then renamed to the next integer version,
so a server never sees a half-written or failed export.

Example:
    keras-vit export --model runs/vit.keras --name vit --class-names @labels.txt --keep 3
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "images_bytes"
OUTPUT_KEYS = ("probabilities", "top_k_classes", "top_k_scores")
LABELS_OUTPUT = "top_k_labels"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "keras_vit_export.json"
MODELS_CONFIG_FILENAME = "models.config"
DEFAULT_CONFIG_BASE_PATH = "/models"
DEFAULT_VERSION_POLICY = "latest:1"
FLOAT32_ATOL = 1e-4
MIXED_PRECISION_ATOL = 2e-2

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
# Letters, digits, "_" and "-": safe as a folder name, in a REST URL
# (/v1/models/<name>:predict) and in models.config, and never "." / "..".
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SERVING_CHECKS = pathlib.Path(__file__).with_name("serving_checks.py")


class ExportError(RuntimeError):
    """An export could not be written or did not pass its checks."""


class DisallowedOpsError(ExportError):
    """The SavedModel uses ops that a stock `tensorflow_model_server` does not have."""


class ExportVerificationError(ExportError):
    """The exported SavedModel does not reproduce the Keras model."""


# --------------------------------------------------------------------------------------
# Small validators
# --------------------------------------------------------------------------------------


def validate_model_name(model_name):
    """Return `model_name` if it is a safe model/folder name, else raise ValueError.

    Args:
        model_name: 1-64 letters, digits, `_` or `-`, starting with a letter or digit.

    Example:
        >>> validate_model_name("vit-b16")
        'vit-b16'
    """
    if not isinstance(model_name, str) or not _MODEL_NAME_RE.match(model_name):
        raise ValueError(
            f"Invalid model name {model_name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit (it becomes a folder and a URL path)."
        )
    return model_name


def image_shape_of(model):
    """Return the `(H, W, C)` a single-input image model expects.

    Args:
        model: a Keras model with input shape `(None, H, W, C)`, all of H, W, C known.

    Example:
        >>> image_shape_of(model)
        (32, 32, 3)
    """
    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ValueError(f"Expected a model with one image input, got inputs {shape}")
        shape = shape[0]
    shape = tuple(shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"Expected a model input of shape (None, H, W, C), got {shape}")
    return tuple(int(d) for d in shape[1:])


def num_classes_of(model):
    """Return K, the size of the model's logits `(None, K)`."""
    shape = tuple(model.output_shape)
    if len(shape) != 2 or shape[1] is None:
        raise ValueError(f"Expected model logits of shape (None, K), got {shape}")
    return int(shape[1])


def compute_dtype_of(model):
    """Return the lowest compute precision used by any layer ("float32", "bfloat16", ...)."""
    dtypes = {str(model.dtype_policy.compute_dtype)}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            dtypes.add(str(policy.compute_dtype))
    for low in ("float16", "bfloat16"):
        if low in dtypes:
            return low
    return "float32"


def tolerance_for(model):
    """Absolute tolerance on probabilities between Keras and the SavedModel.

    Float32 models must agree to 1e-4; mixed precision ones (bf16/fp16 compute)
    round differently between eager Keras and the saved graph, so 2e-2.
    """
    return FLOAT32_ATOL if compute_dtype_of(model) == "float32" else MIXED_PRECISION_ATOL


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return None
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"Got {len(names)} class names for a model with {num_classes} classes")
    return names


def _check_top_k(top_k, num_classes):
    top_k = int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return min(top_k, num_classes)  # top_k larger than K would fail in tf.math.top_k


def as_pixel_images(images, image_shape):
    """Return `images` as float32 `[N, H, W, C]` integer pixel values in [0, 255].

    Sample and warm-up images are rounded to uint8 values so that their PNG encoding
    is lossless and both signatures see exactly the same pixels.

    Example:
        >>> as_pixel_images(np.full((2, 8, 8, 3), 12.4), (8, 8, 3))[0, 0, 0]
        array([12., 12., 12.], dtype=float32)
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"Expected images of shape [N, {', '.join(map(str, image_shape))}], "
            f"got {images.shape}"
        )
    return np.clip(np.rint(images.astype(np.float64)), 0, 255).astype(np.float32)


def make_sample_images(image_shape, count=4, seed=0):
    """Deterministic random pixel images (float32, integer values in [0, 255])."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *image_shape)).astype(np.float32)


def encode_png(images):
    """Encode `[N, H, W, C]` pixel images as a list of PNG `bytes`."""
    import tensorflow as tf

    pixels = np.clip(np.rint(np.asarray(images)), 0, 255).astype(np.uint8)
    return [tf.io.encode_png(image).numpy() for image in pixels]


# --------------------------------------------------------------------------------------
# The serving graph
# --------------------------------------------------------------------------------------


def check_float_images(images, image_shape):
    """In-graph checks on `serving_default` input; failures are INVALID_ARGUMENT.

    The signature's TensorSpec fixes `[None, H, W, C]`, but TF Serving (and a
    reloaded signature) feed whatever shape the request has straight into the
    graph, so the rank/size/channels check has to run at request time. NaN/Inf
    pixels would silently produce NaN probabilities, so they are rejected too.
    """
    import tensorflow as tf

    height, width, channels = image_shape
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)  # safe slice at rank < 4
    valid = tf.logical_and(
        tf.equal(tf.size(shape), 4),
        tf.reduce_all(tf.equal(padded[1:4], [height, width, channels])),
    )
    assertion = tf.debugging.Assert(
        valid,
        [f"images must be float32 [batch, {height}, {width}, {channels}]; got shape", shape],
        summarize=8,
    )
    with tf.control_dependencies([assertion]):
        images = tf.identity(images)
    return tf.debugging.assert_all_finite(images, "images must not contain NaN or Inf pixels")


def build_serving_fns(model, *, class_names=None, top_k=5):
    """Return `{signature_name: (fn, [tf.TensorSpec])}` for `ExportArchive.add_endpoint`.

    Args:
        model: Keras image classifier, float32 `[None, H, W, C]` -> logits `[None, K]`.
        class_names: optional K names; adds the string output `top_k_labels`.
        top_k: how many classes `top_k_*` return (clamped to K).

    Example:
        >>> fns = build_serving_fns(model, class_names=["cat", "dog"], top_k=1)
        >>> fn, spec = fns["serving_default"]
    """
    import tensorflow as tf

    image_shape = image_shape_of(model)
    num_classes = num_classes_of(model)
    class_names = _check_class_names(class_names, num_classes)
    top_k = _check_top_k(top_k, num_classes)

    def classify(images):
        images = check_float_images(images, image_shape)
        # Define the empty batch: [0, K] outputs. Some kernels (e.g. CPU Conv2D) do
        # not handle a zero batch, so the model is not run at all for it.
        logits = tf.cond(
            tf.equal(tf.shape(images)[0], 0),
            lambda: tf.zeros([0, num_classes], tf.float32),
            # float32 whatever the policy: mixed precision models may emit bf16/fp16.
            lambda: tf.cast(model(images, training=False), tf.float32),
        )
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=top_k)
        outputs = {
            "probabilities": probabilities,
            "top_k_classes": tf.cast(classes, tf.int32),
            "top_k_scores": tf.cast(scores, tf.float32),
        }
        if class_names is not None:
            outputs[LABELS_OUTPUT] = tf.gather(tf.constant(class_names), classes)
        return outputs

    def serving_default(images):
        return classify(images)

    def serving_bytes(images_bytes):
        from pipelines.data.images import decode_image_batch

        return classify(decode_image_batch(images_bytes, image_shape))

    return {
        SERVING_DEFAULT: (
            serving_default,
            [tf.TensorSpec((None, *image_shape), tf.float32, name=IMAGES_INPUT)],
        ),
        SERVING_BYTES: (
            serving_bytes,
            [tf.TensorSpec((None,), tf.string, name=BYTES_INPUT)],
        ),
    }


def write_saved_model(model, export_dir, *, class_names=None, top_k=5):
    """Write the two-signature SavedModel for `model` to `export_dir` (Keras export API).

    Example:
        >>> write_saved_model(model, "/tmp/vit/1", class_names=names)
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)  # variables (and any lookup tables) of the model
    # The endpoint named "serving_default" becomes TF Serving's default signature;
    # ExportArchive would otherwise alias the first endpoint.
    for name, (fn, signature) in build_serving_fns(
        model, class_names=class_names, top_k=top_k
    ).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    archive.write_out(str(export_dir), verbose=False)
    return pathlib.Path(export_dir)


def write_metadata(export_dir, *, model_name, model, class_names, top_k):
    """Write `assets.extra/keras_vit_export.json`, describing the export for clients."""
    import keras
    import tensorflow as tf

    num_classes = num_classes_of(model)
    metadata = {
        "model_name": model_name,
        "image_shape": list(image_shape_of(model)),
        "num_classes": num_classes,
        "class_names": _check_class_names(class_names, num_classes),
        "top_k": _check_top_k(top_k, num_classes),
        "pixel_scale": [0, 255],
        "signatures": {SERVING_DEFAULT: IMAGES_INPUT, SERVING_BYTES: BYTES_INPUT},
        "compute_dtype": compute_dtype_of(model),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = pathlib.Path(export_dir) / "assets.extra" / METADATA_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def read_metadata(export_dir):
    """Return the export's metadata dict, or None for a SavedModel without it."""
    path = pathlib.Path(export_dir) / "assets.extra" / METADATA_FILENAME
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------------------
# Warm-up requests
# --------------------------------------------------------------------------------------


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

    images = np.asarray(images, np.float32)
    encoded = encode_png(images)
    if images.shape[-1] in (1, 3):
        # Warm the JPEG decoder too: real clients mostly send JPEGs.
        pixels = np.clip(np.rint(images[:1]), 0, 255).astype(np.uint8)
        encoded = encoded + [tf.io.encode_jpeg(pixels[0]).numpy()]
    batch_sizes = sorted({1, len(images)})
    logs = []
    for signature, input_name, batch in (
        [(SERVING_DEFAULT, IMAGES_INPUT, images[:n]) for n in batch_sizes]
        + [(SERVING_BYTES, BYTES_INPUT, np.array(encoded[:1], dtype=object))]
        + [(SERVING_BYTES, BYTES_INPUT, np.array(encoded, dtype=object))]
    ):
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
    """
    import tensorflow as tf

    path = pathlib.Path(export_dir) / "assets.extra" / WARMUP_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in build_warmup_logs(model_name, images):
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path):
    """Parse a warm-up file into a list of PredictionLog protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


# --------------------------------------------------------------------------------------
# Ops a stock tensorflow_model_server can run
# --------------------------------------------------------------------------------------

_PYTHON_ONLY_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def saved_model_op_names(export_dir):
    """Return `{op_name: count}` over the graph and function library of saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pathlib.Path(export_dir) / "saved_model.pb").read_bytes())
    counts = {}
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        functions = {fn.signature.name for fn in library.function}
        nodes = list(meta_graph.graph_def.node)
        for fn in library.function:
            nodes.extend(fn.node_def)
        for node in nodes:
            if node.op in functions:  # a call of a library function, not an op
                continue
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def find_disallowed_ops(export_dir):
    """List ops in the SavedModel that a stock `tensorflow_model_server` cannot run.

    Flags Python callbacks (`PyFunc`, `EagerPyFunc`: `tf.py_function`/`numpy_function`
    need the Python interpreter) and any op that is not a core TensorFlow op: one
    unknown to the op registry, or registered at run time by a library such as
    tensorflow_text / tensorflow_addons (`tf.raw_ops` lists only ops built into
    TensorFlow, so those are caught even when the library is loaded here).

    Args:
        export_dir: a SavedModel folder.

    Returns:
        Sorted list of `"OpName: reason"` strings; empty when the export is servable.

    Example:
        >>> find_disallowed_ops("savedmodels/vit/1")
        []
    """
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    problems = []
    for op in sorted(saved_model_op_names(export_dir)):
        if op in _PYTHON_ONLY_OPS or op.startswith("PyFunc") or "PyFunc" in op:
            problems.append(f"{op}: calls back into Python (tf.py_function/numpy_function)")
        elif op_def_registry.get(op) is None:
            problems.append(f"{op}: not a registered TensorFlow op")
        elif not hasattr(tf.raw_ops, op):
            problems.append(f"{op}: registered by a non-core library, not in the model server")
    return problems


# --------------------------------------------------------------------------------------
# Versions and models.config
# --------------------------------------------------------------------------------------


def list_versions(model_dir):
    """Sorted integer versions (folders named by a number) under `model_dir`."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit()
    )


def list_exported_models(base_dir):
    """Names of folders under `base_dir` holding at least one version with a saved_model.pb."""
    base_dir = pathlib.Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(
        child.name
        for child in base_dir.iterdir()
        if child.is_dir()
        and _MODEL_NAME_RE.match(child.name)
        and any(
            (child / str(version) / "saved_model.pb").exists()
            for version in list_versions(child)
        )
    )


def _publish(tmp_dir, model_dir):
    """Atomically rename `tmp_dir` to the next free integer version and return it."""
    for _ in range(100):
        target = model_dir / str(max(list_versions(model_dir), default=0) + 1)
        try:
            # rename(2) is atomic: the server sees no version or a complete one. It
            # fails with ENOTEMPTY/EEXIST if a concurrent export took the number.
            os.rename(tmp_dir, target)
            return target
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise ExportError(f"Could not claim a new version number under {model_dir}")


def _remove_dir_atomically(path):
    """Hide `path` from the server with one rename, then delete it."""
    path = pathlib.Path(path)
    trash = path.with_name(f"{_TRASH_PREFIX}{uuid.uuid4().hex}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_versions(model_dir, keep):
    """Delete all but the `keep` newest versions of a model; return the removed ones.

    Example:
        >>> prune_versions("savedmodels/vit", keep=2)
        [1, 2]
    """
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    versions = list_versions(model_dir)
    removed = versions[: max(0, len(versions) - int(keep))]
    for version in removed:
        _remove_dir_atomically(pathlib.Path(model_dir) / str(version))
    return removed


def parse_version_policy(spec):
    """Parse `latest[:N]`, `all` or `specific:V1,V2,...` into a ServableVersionPolicy.

    Example:
        >>> parse_version_policy("latest:2").latest.num_versions
        2
    """
    from tensorflow_serving.config.file_system_storage_path_source_pb2 import (
        FileSystemStoragePathSourceConfig,
    )

    policy = FileSystemStoragePathSourceConfig.ServableVersionPolicy()
    kind, _, arg = str(spec).strip().partition(":")
    try:
        if kind == "latest":
            policy.latest.num_versions = int(arg or 1)
            if policy.latest.num_versions < 1:
                raise ValueError
        elif kind == "all" and not arg:
            policy.all.SetInParent()
        elif kind == "specific" and arg:
            policy.specific.versions.extend(int(v) for v in arg.split(","))
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"Invalid version policy {spec!r}: use 'latest[:N]', 'all' or 'specific:V1,V2'"
        ) from None
    return policy


def read_models_config(base_dir):
    """Parse `base_dir/models.config` (ModelServerConfig text format), or None."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = pathlib.Path(base_dir) / MODELS_CONFIG_FILENAME
    if not path.exists():
        return None
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def write_models_config(base_dir, *, config_base_path=DEFAULT_CONFIG_BASE_PATH, policies=None):
    """(Re)write `base_dir/models.config` listing every exported model under `base_dir`.

    Args:
        base_dir: the savedmodels folder.
        config_base_path: folder where the server sees `base_dir`; `/models` for the
            `tensorflow/serving` docker image with `-v $PWD/savedmodels:/models`.
            None writes absolute host paths (a model server running on this host).
        policies: `{model_name: ServableVersionPolicy | spec str}` to set; other
            models keep the policy the file already had (default `latest:1`).

    Example:
        >>> write_models_config("savedmodels", policies={"vit": "latest:2"})
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base_dir = pathlib.Path(base_dir)
    previous = read_models_config(base_dir)
    old = {c.name: c for c in previous.model_config_list.config} if previous else {}
    policies = dict(policies or {})

    config = model_server_config_pb2.ModelServerConfig()
    for name in list_exported_models(base_dir):
        entry = config.model_config_list.config.add()
        entry.name = name
        if config_base_path is None:
            entry.base_path = str((base_dir / name).resolve())
        else:
            entry.base_path = config_base_path.rstrip("/") + "/" + name
        entry.model_platform = "tensorflow"
        policy = policies.get(name)
        if isinstance(policy, str):
            policy = parse_version_policy(policy)
        if policy is not None:
            entry.model_version_policy.CopyFrom(policy)
        elif name in old and old[name].HasField("model_version_policy"):
            entry.model_version_policy.CopyFrom(old[name].model_version_policy)
        else:
            entry.model_version_policy.CopyFrom(parse_version_policy(DEFAULT_VERSION_POLICY))

    path = base_dir / MODELS_CONFIG_FILENAME
    tmp = base_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{MODELS_CONFIG_FILENAME}"
    tmp.write_text(text_format.MessageToString(config))
    # A polling server (--model_config_file_poll_wait_seconds) never reads half a file.
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# Verification in a fresh process
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class VerificationReport:
    """What `verify_export` checked; `str()` gives the short printed report."""

    export_dir: str
    checks: dict
    seconds: float

    def __str__(self):
        lines = [f"Verified {self.export_dir} in {self.seconds:.1f}s:"]
        lines += [f"  ok  {name}: {detail}" for name, detail in self.checks.items()]
        return "\n".join(lines)


def _saved_model_cli():
    """Command prefix for saved_model_cli from this interpreter's environment."""
    script = pathlib.Path(sys.executable).with_name("saved_model_cli")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def parse_saved_model_cli_show(text):
    """Parse `saved_model_cli show --all` output into a dict per signature.

    Returns:
        `{signature: {"inputs": {key: (dtype, shape)}, "outputs": {...}, "method": str}}`.

    Example:
        >>> parse_saved_model_cli_show(out)["serving_bytes"]["inputs"]
        {'images_bytes': ('DT_STRING', '(-1)')}
    """
    signatures, current, section, key = {}, None, None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Concrete Functions"):
            break
        match = re.match(r"signature_def\['([^']+)'\]:", stripped)
        if match:
            current = signatures.setdefault(match.group(1), {"inputs": {}, "outputs": {}})
            continue
        if current is None:
            continue
        match = re.match(r"(inputs|outputs)\['([^']+)'\] tensor_info:", stripped)
        if match:
            section, key = match.groups()
            current[section][key] = [None, None]
        elif stripped.startswith("dtype:") and key:
            current[section][key][0] = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("shape:") and key:
            current[section][key][1] = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Method name is:"):
            current["method"] = stripped.split(":", 1)[1].strip()
    for signature in signatures.values():
        for section in ("inputs", "outputs"):
            signature[section] = {k: tuple(v) for k, v in signature[section].items()}
    return signatures


def expected_signature_specs(image_shape, num_classes, top_k, with_labels):
    """The signatures `saved_model_cli show` must list: `{sig: {"inputs", "outputs"}}`."""
    h, w, c = image_shape
    outputs = {
        "probabilities": ("DT_FLOAT", f"(-1, {num_classes})"),
        "top_k_classes": ("DT_INT32", f"(-1, {top_k})"),
        "top_k_scores": ("DT_FLOAT", f"(-1, {top_k})"),
    }
    if with_labels:
        outputs[LABELS_OUTPUT] = ("DT_STRING", f"(-1, {top_k})")
    return {
        SERVING_DEFAULT: {
            "inputs": {IMAGES_INPUT: ("DT_FLOAT", f"(-1, {h}, {w}, {c})")},
            "outputs": outputs,
        },
        SERVING_BYTES: {"inputs": {BYTES_INPUT: ("DT_STRING", "(-1)")}, "outputs": outputs},
    }


def _check_cli_show(text, expected):
    found = parse_saved_model_cli_show(text)
    for name, spec in expected.items():
        if name not in found:
            raise ExportVerificationError(
                f"saved_model_cli does not list signature {name!r}; found {sorted(found)}"
            )
        for section in ("inputs", "outputs"):
            if found[name][section] != spec[section]:
                raise ExportVerificationError(
                    f"saved_model_cli {name} {section}: expected {spec[section]}, "
                    f"got {found[name][section]}"
                )
        if found[name].get("method") != "tensorflow/serving/predict":
            raise ExportVerificationError(f"{name} method is {found[name].get('method')!r}")
    return f"lists {', '.join(sorted(expected))} with the expected dtypes and batch -1"


def _check_cli_run(outdir, expected_probabilities, atol):
    classes = np.load(pathlib.Path(outdir) / "top_k_classes.npy")
    probabilities = np.load(pathlib.Path(outdir) / "probabilities.npy")
    top1 = classes[:, 0]
    if expected_probabilities is not None:
        best = expected_probabilities.max(axis=1)
        picked = expected_probabilities[np.arange(len(top1)), top1]
        # The same top class, up to ties closer than the tolerance.
        if np.any(picked < best - atol):
            raise ExportVerificationError(
                f"saved_model_cli run top classes {top1.tolist()} differ from Keras "
                f"{expected_probabilities.argmax(axis=1).tolist()}"
            )
    return (
        f"serving_default in a TF1 session: top classes {top1.tolist()}, "
        f"probabilities {probabilities.shape}"
    )


def _spawn(command, workdir, name, env):
    out = open(pathlib.Path(workdir) / f"{name}.out", "w")
    err = open(pathlib.Path(workdir) / f"{name}.err", "w")
    process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=workdir)
    return process, out, err


def _finish(spawned, name, timeout):
    process, out, err = spawned
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise ExportVerificationError(f"{name} did not finish within {timeout}s") from None
    finally:
        out.close()
        err.close()
    stdout = pathlib.Path(out.name).read_text()
    stderr = pathlib.Path(err.name).read_text()
    if process.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise ExportVerificationError(f"{name} failed (exit {process.returncode}):\n{tail}")
    return stdout


def verify_export(export_dir, model=None, sample_images=None, *, atol=None, timeout=600):
    """Check an export in fresh processes, as a model server would see it.

    Runs in parallel, none of them importing keras_vit (a blocking import hook in
    `pipelines/serving_checks.py`, which is also kept free of keras):

    * `serving_checks.py`: loads the SavedModel, checks both signatures' specs,
      compares `serving_default` on the sample images and `serving_bytes` on their
      PNG encodings with the Keras model's probabilities (within `atol`), checks the
      bad-input behaviour (wrong shape, NaN, empty batch, non-image bytes) and
      replays every warm-up record;
    * `saved_model_cli show --all`: both signatures, names, dtypes, batch `-1`;
    * `saved_model_cli run --signature_def serving_default`: same top class.

    Args:
        export_dir: the SavedModel folder (a version folder or a temp folder).
        model: the Keras model it came from; without it the signatures are only
            compared with each other.
        sample_images: `[N, H, W, C]` pixel images; default 4 seeded random images.
            They are rounded to uint8 values (PNG is lossless on those).
        atol: tolerance on probabilities; default `tolerance_for(model)`.
        timeout: seconds allowed per process.

    Returns:
        A `VerificationReport`.

    Raises:
        ExportVerificationError: on any mismatch or failing check.

    Example:
        >>> print(verify_export("savedmodels/vit/3", model))
    """
    started = time.monotonic()
    export_dir = pathlib.Path(export_dir).resolve()
    metadata = read_metadata(export_dir) or {}
    if model is not None:
        image_shape, num_classes = image_shape_of(model), num_classes_of(model)
    elif metadata:
        image_shape, num_classes = tuple(metadata["image_shape"]), metadata["num_classes"]
    else:
        raise ValueError(f"{export_dir} has no {METADATA_FILENAME}; pass the model")
    if atol is None:
        atol = tolerance_for(model) if model is not None else FLOAT32_ATOL
    if sample_images is None:
        sample_images = make_sample_images(image_shape)
    images = as_pixel_images(sample_images, image_shape)

    expected = None
    if model is not None:
        import tensorflow as tf

        logits = tf.cast(model(images, training=False), tf.float32)
        expected = tf.nn.softmax(logits, axis=-1).numpy()

    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # the parent may already hold the GPU
    with tempfile.TemporaryDirectory(prefix="keras-vit-verify-") as workdir:
        work = pathlib.Path(workdir)
        arrays = {"images": images}
        if expected is not None:
            arrays["expected"] = expected
        np.savez(work / "samples.npz", **arrays)
        np.save(work / "images.npy", images)
        png_files = []
        for i, data in enumerate(encode_png(images)):
            png_files.append(str(work / f"sample_{i}.png"))
            pathlib.Path(png_files[-1]).write_bytes(data)

        # -I: isolated mode, no script dir / cwd / PYTHON* env on sys.path.
        checks = [sys.executable, "-I", str(_SERVING_CHECKS)]
        checks += ["--export-dir", str(export_dir), "--samples", str(work / "samples.npz")]
        checks += ["--atol", repr(float(atol)), "--png", *png_files]
        show = _saved_model_cli() + ["show", "--dir", str(export_dir), "--all"]
        run = _saved_model_cli() + ["run", "--dir", str(export_dir), "--tag_set", "serve"]
        run += ["--signature_def", SERVING_DEFAULT]
        run += ["--inputs", f"{IMAGES_INPUT}={work / 'images.npy'}"]
        run += ["--outdir", str(work / "cli_run"), "--overwrite"]
        spawned = {
            "serving_checks": _spawn(checks, work, "checks", env),
            "saved_model_cli show": _spawn(show, work, "show", env),
            "saved_model_cli run": _spawn(run, work, "run", env),
        }
        outputs = {}
        try:
            for name, process in spawned.items():
                outputs[name] = _finish(process, name, timeout)
        finally:
            for process, out, err in spawned.values():  # after a failure, stop the others
                if process.poll() is None:
                    process.kill()
                    process.wait()
                out.close()
                err.close()

        report_lines = [
            line
            for line in outputs["serving_checks"].splitlines()
            if line.startswith("SERVING_CHECKS_REPORT ")
        ]
        if not report_lines:
            raise ExportVerificationError("serving_checks printed no report")
        result = json.loads(report_lines[-1].split(" ", 1)[1])
        with_labels = LABELS_OUTPUT in result.get("outputs", [])
        top_k = result["top_k"]
        checks_done = dict(result["checks"])
        checks_done["saved_model_cli show"] = _check_cli_show(
            outputs["saved_model_cli show"],
            expected_signature_specs(image_shape, num_classes, top_k, with_labels),
        )
        checks_done["saved_model_cli run"] = _check_cli_run(work / "cli_run", expected, atol)
    return VerificationReport(str(export_dir), checks_done, time.monotonic() - started)


# --------------------------------------------------------------------------------------
# The export itself
# --------------------------------------------------------------------------------------


def export_model(
    model,
    model_name,
    base_dir="savedmodels",
    *,
    class_names=None,
    top_k=5,
    warmup_images=None,
    verify=True,
    keep_versions=None,
    config_base_path=DEFAULT_CONFIG_BASE_PATH,
    version_policy=None,
    verbose=True,
):
    """Export `model` as the next version of `base_dir/model_name` for TF Serving.

    Writes into a hidden temp folder, checks the ops, writes the warm-up file,
    verifies in a fresh process (`verify=True`), then renames it to version
    `max(existing) + 1` and updates `base_dir/models.config`. Any failure removes
    the temp folder (and a just-renamed version), leaving `base_dir` as it was.

    Args:
        model: Keras classifier, float32 `[None, H, W, C]` pixels in [0, 255] ->
            logits `[None, K]`.
        model_name: served model name; letters, digits, `_`, `-`.
        base_dir: the savedmodels folder (created if missing).
        class_names: optional K class names, exported as `top_k_labels`.
        top_k: number of classes in `top_k_*` outputs (clamped to K).
        warmup_images: optional `[N, H, W, C]` pixel images for the warm-up records
            and verification; default: zeros for warm-up, random for verification.
        verify: run `verify_export` before publishing the version.
        keep_versions: if set, delete all but the newest `keep_versions` versions.
        config_base_path: where the server sees `base_dir` (`/models` in docker);
            None writes absolute host paths into models.config.
        version_policy: `latest[:N]`, `all` or `specific:V1,V2` for this model in
            models.config; None keeps the current one (default `latest:1`).
        verbose: print where the version went and the verification report.

    Returns:
        `pathlib.Path` of the new version folder, e.g. `savedmodels/vit/3`.

    Example:
        >>> export_model(model, "vit", class_names=["cat", "dog"], keep_versions=3)
        PosixPath('savedmodels/vit/1')
    """
    model_name = validate_model_name(model_name)
    image_shape = image_shape_of(model)
    num_classes = num_classes_of(model)
    class_names = _check_class_names(class_names, num_classes)
    top_k = _check_top_k(top_k, num_classes)
    policy = parse_version_policy(version_policy) if version_policy is not None else None
    if keep_versions is not None and int(keep_versions) < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
    if warmup_images is not None:
        warmup_images = as_pixel_images(warmup_images, image_shape)[:8]

    base_dir = pathlib.Path(base_dir)
    model_dir = base_dir / model_name
    # Folders this export creates (deepest first), removed again if it fails.
    created_dirs = [path for path in (model_dir, *model_dir.parents) if not path.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = model_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    version_dir = None
    try:
        write_saved_model(model, tmp_dir, class_names=class_names, top_k=top_k)
        write_metadata(
            tmp_dir, model_name=model_name, model=model, class_names=class_names, top_k=top_k
        )
        if warmup_images is None:
            warmup_images_or_zeros = np.zeros((2, *image_shape), np.float32)
        else:
            warmup_images_or_zeros = warmup_images
        write_warmup_requests(tmp_dir, model_name, warmup_images_or_zeros)
        disallowed = find_disallowed_ops(tmp_dir)
        if disallowed:
            raise DisallowedOpsError(
                "The export uses ops a stock tensorflow_model_server lacks:\n  "
                + "\n  ".join(disallowed)
            )
        if verify:
            report = verify_export(tmp_dir, model=model, sample_images=warmup_images)
            if verbose:
                print(str(report).replace(str(tmp_dir.resolve()), "the export"))
        version_dir = _publish(tmp_dir, model_dir)
        write_models_config(
            base_dir,
            config_base_path=config_base_path,
            policies={model_name: policy} if policy is not None else None,
        )
    except BaseException:
        # Leave nothing a server would load: no temp folder, no new version.
        if version_dir is not None and version_dir.exists():
            _remove_dir_atomically(version_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for path in created_dirs:
            if path.exists() and not any(path.iterdir()):
                path.rmdir()
        raise
    if keep_versions is not None:
        try:  # the new version is already live: a failed clean-up must not undo it
            removed = prune_versions(model_dir, keep_versions)
        except OSError as error:
            message = f"warning: could not prune old versions of {model_name}: {error}"
            print(message, file=sys.stderr)
        else:
            if removed and verbose:
                print(f"Removed old versions {removed} of {model_name}")
    if verbose:
        print(f"Exported {model_name} version {version_dir.name} to {version_dir}")
    return version_dir


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_class_names(value):
    """`a,b,c` or `@file` (one name per line) -> list of names, or None."""
    if not value:
        return None
    if value.startswith("@"):
        lines = pathlib.Path(value[1:]).read_text().splitlines()
        return [line.strip() for line in lines if line.strip()]
    return [name.strip() for name in value.split(",")]


def load_keras_model(path):
    """Load a `.keras` file, registering keras_vit's custom layers first."""
    import importlib

    import keras

    for module in ("keras_vit.layers", "keras_vit.models"):
        try:  # importing registers the serializable custom objects
            importlib.import_module(module)
        except ImportError:
            pass
    return keras.saving.load_model(path, compile=False)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit export",
        description="Export a saved .keras image classifier as the next version of a "
        "TF Serving model under --base-dir, verify it and update models.config.",
        epilog="Example: keras-vit export --model runs/vit.keras --name vit "
        "--class-names cat,dog --keep 3",
    )
    add = parser.add_argument
    add("--model", required=True, help="path to the trained .keras model")
    add(
        "--name",
        required=True,
        help="served model name (letters, digits, '_', '-'); its folder under --base-dir",
    )
    add("--base-dir", default="savedmodels", help="TF Serving base folder (default: savedmodels)")
    add(
        "--class-names",
        default=None,
        help="comma separated class names, or @FILE with one name per line; adds the "
        "top_k_labels output",
    )
    add("--top-k", type=int, default=5, help="classes in the top_k_* outputs (default: 5)")
    add(
        "--keep",
        type=int,
        default=None,
        metavar="N",
        help="after exporting, delete all but the N newest versions (default: keep all)",
    )
    add(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify the export in a fresh process (signatures vs Keras, saved_model_cli, "
        "warm-up replay) before publishing it (default: --verify)",
    )
    add(
        "--config-base-path",
        default=DEFAULT_CONFIG_BASE_PATH,
        help="where the server sees --base-dir, for base_path in models.config (default: "
        "/models, the tensorflow/serving docker image with -v $PWD/savedmodels:/models)",
    )
    add(
        "--absolute-base-paths",
        action="store_true",
        help="write absolute host paths into models.config instead (for a "
        "tensorflow_model_server running on this machine)",
    )
    add(
        "--version-policy",
        default=None,
        help="versions served for this model: latest[:N], all or specific:V1,V2 "
        "(default: keep the current policy, initially latest:1)",
    )
    add("--quiet", action="store_true", help="print only the new version folder")
    return parser


def main(argv=None):
    """`keras-vit export ...`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        validate_model_name(args.name)
        if args.version_policy is not None:
            parse_version_policy(args.version_policy)
        model = load_keras_model(args.model)
        version_dir = export_model(
            model,
            args.name,
            args.base_dir,
            class_names=parse_class_names(args.class_names),
            top_k=args.top_k,
            verify=args.verify,
            keep_versions=args.keep,
            config_base_path=None if args.absolute_base_paths else args.config_base_path,
            version_policy=args.version_policy,
            verbose=not args.quiet,
        )
    except (ValueError, OSError, ExportError) as error:
        print(f"keras-vit export: error: {error}", file=sys.stderr)
        return 1
    if args.quiet:
        print(version_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
