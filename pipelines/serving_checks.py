"""Check an exported SavedModel the way a model server sees it: without our code.

`pipelines.serving.verification.verify_export` runs this file in a fresh interpreter
(`python -I pipelines/serving_checks.py ...`). It installs an import hook first so
that `keras_vit`, `pipelines` and even `keras` cannot be imported: the SavedModel
must be self-contained, like it is inside `tensorflow_model_server`. Only
TensorFlow, NumPy and tensorflow-serving-api protos are used.

Checks, each raising `CheckFailed` on a mismatch:

* both signatures exist with the expected inputs, dtypes and a dynamic batch;
* `serving_default` on the sample images and `serving_bytes` on their PNG files
  agree with the expected (Keras) probabilities and with each other;
* top-k outputs are consistent with the probabilities;
* bad requests (wrong shape, NaN pixels, a non-image file) fail with
  InvalidArgumentError, an empty batch gives `[0, K]`, and a good request still
  works afterwards;
* every warm-up record replays through its signature.

The last stdout line is `SERVING_CHECKS_REPORT {json}`.

Example:
    python -I pipelines/serving_checks.py --export-dir savedmodels/vit/1 \\
        --samples samples.npz --png a.png b.png --atol 1e-4
"""

import importlib.abc
import sys

BLOCKED_PACKAGES = ("keras_vit", "pipelines", "keras", "tf_keras")


class _BlockedLoader(importlib.abc.Loader):
    def __init__(self, name):
        self.name = name

    def _refuse(self):
        raise ImportError(
            f"{self.name} must not be imported while checking an export: a model server "
            "has only the SavedModel, so the check must not rely on Python model code"
        )

    def create_module(self, spec):
        self._refuse()

    def exec_module(self, module):
        self._refuse()


class ImportBlocker(importlib.abc.MetaPathFinder):
    """Meta path finder that makes importing the given top-level packages fail.

    It still answers `importlib.util.find_spec` (TensorFlow asks where `keras` lives
    to set up its lazy `tf.keras`), but loading the module raises ImportError.
    """

    def __init__(self, blocked=BLOCKED_PACKAGES):
        self.blocked = set(blocked)

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in self.blocked:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                spec.loader = _BlockedLoader(fullname)
                return spec
        return None


def install_import_blocker(blocked=BLOCKED_PACKAGES):
    """Block `blocked` packages in this process (and drop any already imported)."""
    for name in list(sys.modules):
        if name.partition(".")[0] in blocked:
            del sys.modules[name]
    blocker = ImportBlocker(blocked)
    sys.meta_path.insert(0, blocker)
    return blocker


if __name__ == "__main__":  # block before TensorFlow (or anything) gets imported
    install_import_blocker()

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "images_bytes"
OUTPUT_KEYS = ("probabilities", "top_k_classes", "top_k_scores")
LABELS_OUTPUT = "top_k_labels"
WARMUP_RELATIVE_PATH = "assets.extra/tf_serving_warmup_requests"


class CheckFailed(AssertionError):
    """The export does not behave as a served model should."""


def _require(condition, message):
    if not condition:
        raise CheckFailed(message)


def call_signature(loaded, signature_name, inputs):
    """Call a loaded signature with numpy inputs; return `{output: np.ndarray}`.

    Example:
        >>> call_signature(tf.saved_model.load(d), "serving_bytes", {"images_bytes": [png]})
    """
    import tensorflow as tf

    function = loaded.signatures[signature_name]
    tensors = {name: tf.convert_to_tensor(value) for name, value in inputs.items()}
    return {name: value.numpy() for name, value in function(**tensors).items()}


def check_signature_specs(loaded):
    """Check both signatures' inputs and outputs.

    Returns:
        `(image_shape, num_classes, top_k, sorted output names)`.
    """
    import tensorflow as tf

    _require(
        {SERVING_DEFAULT, SERVING_BYTES} <= set(loaded.signatures),
        f"missing signatures, found {sorted(loaded.signatures)}",
    )
    specs = {}
    for name, input_name, dtype in (
        (SERVING_DEFAULT, IMAGES_INPUT, tf.float32),
        (SERVING_BYTES, BYTES_INPUT, tf.string),
    ):
        function = loaded.signatures[name]
        inputs = function.structured_input_signature[1]
        _require(set(inputs) == {input_name}, f"{name} inputs are {sorted(inputs)}")
        spec = inputs[input_name]
        _require(spec.dtype == dtype, f"{name} input dtype is {spec.dtype}")
        _require(spec.shape[0] is None, f"{name} batch dimension is not dynamic: {spec.shape}")
        specs[name] = (spec, function.structured_outputs)
    image_spec, outputs = specs[SERVING_DEFAULT]
    _require(image_spec.shape.rank == 4, f"images spec is {image_spec.shape}")
    _require(specs[SERVING_BYTES][0].shape.rank == 1, "images_bytes must be a [batch] vector")
    _require(set(OUTPUT_KEYS) <= set(outputs), f"outputs are {sorted(outputs)}")
    _require(
        set(outputs) == set(specs[SERVING_BYTES][1]), "the two signatures have different outputs"
    )
    for key, spec in outputs.items():
        expected = {"top_k_classes": tf.int32, LABELS_OUTPUT: tf.string}.get(key, tf.float32)
        _require(spec.dtype == expected, f"output {key} is {spec.dtype}, expected {expected}")
        _require(spec.shape[0] is None, f"output {key} batch is not dynamic: {spec.shape}")
    image_shape = tuple(int(d) for d in image_spec.shape[1:])
    return image_shape, int(outputs["probabilities"].shape[1]), int(
        outputs["top_k_classes"].shape[1]
    ), sorted(outputs)


def check_top_k(outputs, top_k):
    """`top_k_scores`/`top_k_classes` must be the sorted top of `probabilities`."""
    probabilities = outputs["probabilities"]
    classes, scores = outputs["top_k_classes"], outputs["top_k_scores"]
    _require(classes.shape == (len(probabilities), top_k), f"top_k_classes {classes.shape}")
    picked = np.take_along_axis(probabilities, classes.astype(np.int64), axis=1)
    _require(np.allclose(picked, scores, atol=1e-6), "top_k_scores do not match probabilities")
    _require(np.all(np.diff(scores, axis=1) <= 1e-7), "top_k_scores are not sorted")
    _require(
        np.allclose(scores[:, 0], probabilities.max(axis=1), atol=1e-6),
        "top_k_scores[:, 0] is not the best probability",
    )
    sums = probabilities.sum(axis=1)
    _require(np.allclose(sums, 1.0, atol=1e-4), "probabilities do not sum to 1")


def _max_diff(a, b):
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_predictions(loaded, images, png_files, expected, atol, top_k):
    """Both signatures vs the expected probabilities and each other."""
    float_out = call_signature(loaded, SERVING_DEFAULT, {IMAGES_INPUT: images})
    bytes_out = call_signature(
        loaded, SERVING_BYTES, {BYTES_INPUT: np.array(png_files, dtype=object)}
    )
    for name, outputs in ((SERVING_DEFAULT, float_out), (SERVING_BYTES, bytes_out)):
        for key, value in outputs.items():
            _require(value.dtype != np.float16, f"{name} {key} is float16")
        check_top_k(outputs, top_k)
    details = {}
    if expected is not None:
        for name, outputs in ((SERVING_DEFAULT, float_out), (SERVING_BYTES, bytes_out)):
            diff = _max_diff(outputs["probabilities"], expected)
            message = f"{name} probabilities differ from Keras by {diff:.3g} > {atol}"
            _require(diff <= atol, message)
            details[name] = f"max |p - keras| = {diff:.2e} on {len(images)} images"
    diff = _max_diff(float_out["probabilities"], bytes_out["probabilities"])
    _require(diff <= atol, f"serving_bytes differs from serving_default by {diff:.3g}")
    details["bytes vs float"] = f"max diff {diff:.2e}"
    return details


def short_error(message, limit=200):
    """The informative line of a TensorFlow error message (skips the graph boilerplate).

    Example:
        >>> short_error("Graph execution error:\\n\\nDetected at node x\\nassertion failed: [..]")
        'assertion failed: [..]'
    """
    import re

    boilerplate = ("Graph execution error", "Detected at node", "<stack traces", "[[{{")
    lines = [line.strip() for line in str(message).splitlines()]
    useful = [line for line in lines if line and not line.startswith(boilerplate)]
    text = useful[0] if useful else str(message).strip()
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)  # {{function_node ...}} prefixes
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text)  # [Op:DecodeImage] name: suffix
    return text.strip()[:limit]


def _expect_invalid_argument(function, what):
    import tensorflow as tf

    try:
        function()
    except tf.errors.InvalidArgumentError as error:
        return "INVALID_ARGUMENT: " + short_error(error.message, 120)
    raise CheckFailed(f"{what} was accepted instead of failing with INVALID_ARGUMENT")


def check_bad_inputs(loaded, image_shape, num_classes, good_images, good_png):
    """Bad requests fail cleanly; empty batches give `[0, K]`; the model keeps serving."""
    height, width, channels = image_shape
    wrong_size = np.zeros((1, height + 1, width, channels), np.float32)
    nan_images = np.array(good_images[:1], np.float32)
    nan_images[0, 0, 0, 0] = np.nan
    results = {
        "wrong size": _expect_invalid_argument(
            lambda: call_signature(loaded, SERVING_DEFAULT, {IMAGES_INPUT: wrong_size}),
            "an image of the wrong size",
        ),
        "NaN pixels": _expect_invalid_argument(
            lambda: call_signature(loaded, SERVING_DEFAULT, {IMAGES_INPUT: nan_images}),
            "NaN pixels",
        ),
        "not an image": _expect_invalid_argument(
            lambda: call_signature(
                loaded, SERVING_BYTES, {BYTES_INPUT: np.array([good_png, b"not an image"], object)}
            ),
            "a non-image file",
        ),
    }
    empty = call_signature(
        loaded, SERVING_DEFAULT, {IMAGES_INPUT: np.zeros((0, *image_shape), np.float32)}
    )
    empty_bytes = call_signature(loaded, SERVING_BYTES, {BYTES_INPUT: np.array([], object)})
    for outputs in (empty, empty_bytes):
        _require(
            outputs["probabilities"].shape == (0, num_classes),
            f"empty batch gave {outputs['probabilities'].shape}",
        )
    after = call_signature(loaded, SERVING_DEFAULT, {IMAGES_INPUT: good_images[:1]})
    _require(np.all(np.isfinite(after["probabilities"])), "model broken after bad requests")
    results["empty batch"] = f"probabilities shape (0, {num_classes})"
    return results


def replay_warmup(loaded, export_dir):
    """Replay every warm-up PredictionLog through its signature; return the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = pathlib.Path(export_dir) / WARMUP_RELATIVE_PATH
    _require(path.exists(), f"no warm-up file at {path}")
    count, signatures = 0, set()
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        _require(log.HasField("predict_log"), "warm-up record is not a PredictLog")
        request = log.predict_log.request
        _require(request.model_spec.name, "warm-up request has no model_spec.name")
        name = request.model_spec.signature_name or SERVING_DEFAULT
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = call_signature(loaded, name, inputs)
        batch = len(next(iter(inputs.values())))
        _require(outputs["probabilities"].shape[0] == batch, f"warm-up {name} batch mismatch")
        _require(np.all(np.isfinite(outputs["probabilities"])), f"warm-up {name} gave NaN")
        count += 1
        signatures.add(name)
    _require({SERVING_DEFAULT, SERVING_BYTES} <= signatures, f"warm-up covers only {signatures}")
    return count


def run_checks(export_dir, images, png_files, expected=None, atol=1e-4, self_contained=True):
    """Run every check on `export_dir`; return the report dict.

    Args:
        export_dir: SavedModel folder.
        images: float32 `[N, H, W, C]` integer-valued pixels.
        png_files: the same images as PNG bytes.
        expected: optional Keras probabilities `[N, K]` to compare with.
        atol: tolerance on probabilities.
        self_contained: also require that no blocked package (keras, keras_vit, ...)
            got imported; only meaningful in the fresh process.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    image_shape, num_classes, top_k, outputs = check_signature_specs(loaded)
    _require(
        tuple(images.shape[1:]) == image_shape,
        f"sample images {images.shape} do not fit {image_shape}",
    )
    checks = {
        "signatures": f"images {image_shape} float32, images_bytes string, outputs {outputs}"
    }
    for name, detail in check_predictions(
        loaded, images, png_files, expected, atol, top_k
    ).items():
        checks[f"predictions {name}"] = detail
    for name, detail in check_bad_inputs(
        loaded, image_shape, num_classes, images, png_files[0]
    ).items():
        checks[f"bad input: {name}"] = detail
    checks["warm-up replay"] = f"{replay_warmup(loaded, export_dir)} records"
    if self_contained:
        leaked = sorted(
            name for name in sys.modules if name.partition(".")[0] in BLOCKED_PACKAGES
        )
        _require(not leaked, f"modules that should not be needed were imported: {leaked}")
        checks["self-contained"] = "loaded and ran without keras_vit, pipelines or keras"
    return {"checks": checks, "top_k": top_k, "outputs": outputs, "image_shape": image_shape}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--samples", required=True, help=".npz with images (and expected)")
    parser.add_argument("--png", nargs="+", required=True, help="PNG files of the same images")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    samples = np.load(args.samples)
    images = samples["images"].astype(np.float32)
    expected = samples["expected"] if "expected" in samples.files else None
    png_files = [pathlib.Path(path).read_bytes() for path in args.png]
    report = run_checks(args.export_dir, images, png_files, expected, args.atol)
    print("SERVING_CHECKS_REPORT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
