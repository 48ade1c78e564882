"""Tests of the TF Serving export (pipelines/serving/, pipelines/export.py, serving_checks.py).

Everything goes through a real export of a tiny trained model, made once per module
(`exported`, with the fresh-process verification) and reloaded with
`tf.saved_model.load`, the way a model server sees it. `make_tiny_trained_model`
is the one place to swap in the package's ViT.
"""

import io
import os
import pathlib
import subprocess
import sys
import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipelines import export, serving_checks
from pipelines.data import images, load_datasets
from pipelines.serving import contract, model_info, transaction

IMAGE_SHAPE = (16, 16, 3)
CLASS_NAMES = ["cat", "dog", "bird", "fish"]
NUM_CLASSES = len(CLASS_NAMES)
TOP_K = 3
MODEL_NAME = "tiny"


def make_tiny_trained_model(image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, dtype=None):
    """A small classifier trained for two steps on random pixels.

    Same contract as the package's ViT: float32 `[None, H, W, C]` raw pixels in
    [0, 255] in (rescaled inside the model), logits `[None, K]` out.

    Args:
        image_shape: `(H, W, C)`.
        num_classes: K.
        dtype: optional layer dtype policy, e.g. "mixed_bfloat16" (logits then come
            out in bfloat16, which the export must cast to float32).
    """
    keras.utils.set_random_seed(1)
    inputs = keras.Input(image_shape)
    x = keras.layers.Rescaling(1 / 255, dtype=dtype)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = keras.layers.Dense(num_classes, dtype=dtype)(x)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, *image_shape)).astype("float32")
    labels = rng.integers(0, num_classes, 16)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    return model


def keras_probabilities(model, images):
    logits = tf.cast(model(np.asarray(images, np.float32), training=False), tf.float32)
    return tf.nn.softmax(logits).numpy()


def pixel_images(count, shape=IMAGE_SHAPE, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.float32)


def listing(root):
    """Every path under `root` (relative), plus models.config's text."""
    root = pathlib.Path(root)
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    config = root / export.MODELS_CONFIG_FILENAME
    return paths, config.read_text() if config.exists() else None


@pytest.fixture(scope="module")
def model():
    return make_tiny_trained_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """One verified export (fresh process, saved_model_cli) reused by the module."""
    base_dir = tmp_path_factory.mktemp("savedmodels")
    reports = []
    verify = transaction.verify_export

    def spy(*args, **kwargs):
        reports.append(verify(*args, **kwargs))
        return reports[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transaction, "verify_export", spy)
        version_dir = export.export_model(
            model,
            MODEL_NAME,
            base_dir,
            class_names=CLASS_NAMES,
            top_k=TOP_K,
            warmup_images=pixel_images(3, seed=7),
            verify=True,
        )
    return types.SimpleNamespace(
        model=model,
        base_dir=base_dir,
        version_dir=version_dir,
        loaded=tf.saved_model.load(str(version_dir)),
        report=reports[0],
    )


def serve(exported, signature, value):
    name = {"serving_default": "images", "serving_bytes": "images_bytes"}[signature]
    dtype = tf.float32 if signature == "serving_default" else tf.string
    outputs = exported.loaded.signatures[signature](**{name: tf.constant(value, dtype)})
    return {key: tensor.numpy() for key, tensor in outputs.items()}


# ----------------------------------------------------------------------- layout


@pytest.mark.slow
def test_layout_is_tf_serving_version_folder(exported):
    assert exported.version_dir == exported.base_dir / MODEL_NAME / "1"
    assert (exported.version_dir / "saved_model.pb").is_file()
    assert (exported.version_dir / "variables" / "variables.index").is_file()
    assert (exported.version_dir / "assets.extra" / export.WARMUP_FILENAME).is_file()
    # Nothing else a server would try to load, no leftover temp folder.
    assert sorted(p.name for p in (exported.base_dir / MODEL_NAME).iterdir()) == ["1"]
    assert sorted(p.name for p in exported.base_dir.iterdir()) == [
        export.MODELS_CONFIG_FILENAME,
        MODEL_NAME,
    ]
    metadata = export.read_metadata(exported.version_dir)
    assert metadata["image_shape"] == list(IMAGE_SHAPE)
    assert metadata["class_names"] == CLASS_NAMES and metadata["top_k"] == TOP_K


@pytest.mark.slow
def test_fresh_process_verification_report(exported):
    checks = exported.report.checks
    for name in (
        "predictions serving_default",
        "predictions serving_bytes",
        "warm-up replay",
        "self-contained",
        "saved_model_cli show",
        "saved_model_cli run",
        "bad input: NaN pixels",
        "bad input: empty batch",
    ):
        assert name in checks, name
    assert "keras_vit" in checks["self-contained"]
    assert "Verified" in str(exported.report)


@pytest.mark.slow
def test_signatures_have_dynamic_batch_and_float32_outputs(exported):
    signatures = exported.loaded.signatures
    assert {"serving_default", "serving_bytes"} <= set(signatures)
    images = signatures["serving_default"].structured_input_signature[1]["images"]
    assert images.dtype == tf.float32 and images.shape.as_list() == [None, *IMAGE_SHAPE]
    files = signatures["serving_bytes"].structured_input_signature[1]["images_bytes"]
    assert files.dtype == tf.string and files.shape.as_list() == [None]
    for name in ("serving_default", "serving_bytes"):
        outputs = signatures[name].structured_outputs
        assert outputs["probabilities"].dtype == tf.float32
        assert outputs["probabilities"].shape.as_list() == [None, NUM_CLASSES]
        assert outputs["top_k_classes"].dtype == tf.int32
        assert outputs["top_k_scores"].dtype == tf.float32
        assert outputs["top_k_labels"].dtype == tf.string
        assert outputs["top_k_scores"].shape.as_list() == [None, TOP_K]


# ----------------------------------------------------------------- predictions


@pytest.mark.slow
def test_serving_default_matches_keras(exported):
    images = pixel_images(5)
    outputs = serve(exported, "serving_default", images)
    expected = keras_probabilities(exported.model, images)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["top_k_classes"][:, 0], expected.argmax(axis=1))
    labels = [[CLASS_NAMES[c] for c in row] for row in outputs["top_k_classes"]]
    assert outputs["top_k_labels"].astype(str).tolist() == labels
    np.testing.assert_allclose(
        outputs["top_k_scores"], np.sort(expected, axis=1)[:, ::-1][:, :TOP_K], atol=1e-5
    )


@pytest.mark.slow
def test_serving_bytes_matches_keras_on_png_and_jpeg(exported):
    images = pixel_images(3).astype(np.uint8)
    png = [tf.io.encode_png(image).numpy() for image in images]
    jpeg = [tf.io.encode_jpeg(image, quality=90).numpy() for image in images]
    outputs = serve(exported, "serving_bytes", png + jpeg)
    # PNG is lossless: the exact pixels. JPEG: compare with the model on the JPEG's
    # own decoded pixels (same libjpeg decoder), so the tolerance stays tight.
    decoded_jpeg = np.stack([tf.io.decode_jpeg(data, channels=3).numpy() for data in jpeg])
    expected = keras_probabilities(exported.model, np.concatenate([images, decoded_jpeg]))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    # And JPEG artefacts stay close to the original image's prediction.
    np.testing.assert_allclose(outputs["probabilities"][3:], expected[:3], atol=0.1)


@pytest.mark.slow
def test_serving_bytes_resizes_like_the_training_pipeline(exported):
    big = pixel_images(1, shape=(23, 37, 3), seed=11)[0].astype(np.uint8)
    gray = pixel_images(1, shape=(16, 16, 1), seed=12)[0].astype(np.uint8)
    files = [tf.io.encode_png(big).numpy(), tf.io.encode_png(gray).numpy()]
    outputs = serve(exported, "serving_bytes", files)
    resized = images.resize_pixels(big, IMAGE_SHAPE[:2]).numpy()
    rgb = np.repeat(gray, 3, axis=-1).astype(np.float32)  # decode_image(channels=3)
    expected = keras_probabilities(exported.model, np.stack([resized, rgb]))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)


@pytest.mark.slow
def test_serving_bytes_accepts_gif_and_bmp(exported):
    image = pixel_images(1, seed=5)[0].astype(np.uint8)
    files = []
    for fmt in ("BMP", "GIF"):
        pil = pytest.importorskip("PIL.Image")
        buffer = io.BytesIO()
        pil.fromarray(image).save(buffer, format=fmt)
        files.append(buffer.getvalue())
    outputs = serve(exported, "serving_bytes", files)
    decoded = np.stack(
        [tf.io.decode_image(f, channels=3, expand_animations=False).numpy() for f in files]
    )
    np.testing.assert_allclose(
        outputs["probabilities"], keras_probabilities(exported.model, decoded), atol=1e-5
    )


# ------------------------------------------------------------------- bad input


def _assert_invalid_argument(call, *fragments):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        call()
    message = serving_checks.short_error(info.value.message)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [
        (1, 17, 16, 3),
        (1, 16, 15, 3),
        (2, 16, 16, 1),
        (2, 16, 16, 4),
        (16, 16, 3),
        (1, 2, 16, 16, 3),
    ],
    ids=["height", "width", "1-channel", "4-channels", "rank-3", "rank-5"],
)
def test_wrong_shape_is_invalid_argument(exported, shape):
    _assert_invalid_argument(
        lambda: serve(exported, "serving_default", np.zeros(shape, np.float32)),
        "images must be float32 [batch, 16, 16, 3]",
    )
    _assert_server_still_works(exported)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_invalid_argument(exported, bad):
    images = pixel_images(2)
    images[1, 3, 4, 0] = bad
    _assert_invalid_argument(lambda: serve(exported, "serving_default", images), "NaN or Inf")
    _assert_server_still_works(exported)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["garbage", "truncated-png", "truncated-jpeg", "empty-string"])
def test_bad_files_are_invalid_argument(exported, kind):
    image = pixel_images(1)[0].astype(np.uint8)
    png = tf.io.encode_png(image).numpy()
    bad = {
        "garbage": b"this is not an image",
        "truncated-png": png[: len(png) // 2],
        "truncated-jpeg": tf.io.encode_jpeg(image).numpy()[:200],
        "empty-string": b"",
    }[kind]
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(exported, "serving_bytes", [png, bad])
    assert serving_checks.short_error(info.value.message)  # a readable reason
    _assert_server_still_works(exported)


@pytest.mark.slow
@pytest.mark.parametrize("signature", ["serving_default", "serving_bytes"])
def test_empty_batch_gives_empty_outputs(exported, signature):
    value = np.zeros((0, *IMAGE_SHAPE), np.float32) if signature == "serving_default" else []
    outputs = serve(exported, signature, value)
    assert outputs["probabilities"].shape == (0, NUM_CLASSES)
    for key in ("top_k_classes", "top_k_scores", "top_k_labels"):
        assert outputs[key].shape == (0, TOP_K)


def _assert_server_still_works(exported):
    images = pixel_images(1)
    outputs = serve(exported, "serving_default", images)
    np.testing.assert_allclose(
        outputs["probabilities"], keras_probabilities(exported.model, images), atol=1e-5
    )


@pytest.mark.slow
def test_bad_requests_in_a_tf1_session_like_tf_serving(exported):
    """TF Serving runs the signature in a TF1 Session; errors stay per request there too."""
    good = pixel_images(2)
    expected = keras_probabilities(exported.model, good)  # eagerly, outside the TF1 graph
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], str(exported.version_dir))
        signature = meta_graph.signature_def["serving_default"]
        images = signature.inputs["images"].name
        probabilities = signature.outputs["probabilities"].name
        nan = np.full((1, *IMAGE_SHAPE), np.nan, np.float32)
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
            session.run(probabilities, {images: nan})
        empty = session.run(probabilities, {images: np.zeros((0, *IMAGE_SHAPE), np.float32)})
        assert empty.shape == (0, NUM_CLASSES)
        np.testing.assert_allclose(session.run(probabilities, {images: good}), expected, atol=1e-5)


# --------------------------------------------------------- warm-up, config, ops


@pytest.mark.slow
def test_warmup_records_parse_and_replay(exported):
    logs = export.read_warmup_requests(
        exported.version_dir / "assets.extra" / export.WARMUP_FILENAME
    )
    assert len(logs) >= 2
    signatures = set()
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == MODEL_NAME
        signatures.add(request.model_spec.signature_name)
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        (name,) = inputs
        if request.model_spec.signature_name == "serving_default":
            # The warm-up uses the warmup_images given to export_model.
            warmup_images = pixel_images(3, seed=7)[: len(inputs[name])]
            np.testing.assert_array_equal(inputs[name], warmup_images)
        outputs = exported.loaded.signatures[request.model_spec.signature_name](
            **{name: tf.constant(inputs[name])}
        )
        assert outputs["probabilities"].shape == (len(inputs[name]), NUM_CLASSES)
    assert signatures == {"serving_default", "serving_bytes"}


@pytest.mark.slow
def test_models_config_lists_the_model(exported):
    text = (exported.base_dir / export.MODELS_CONFIG_FILENAME).read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == MODEL_NAME
    assert entry.base_path == f"/models/{MODEL_NAME}"
    assert entry.model_platform == "tensorflow"
    assert entry.model_version_policy.latest.num_versions == 1


@pytest.mark.slow
def test_no_disallowed_ops(exported):
    assert export.find_disallowed_ops(exported.version_dir) == []
    ops = export.saved_model_op_names(exported.version_dir)
    assert "DecodeImage" in ops and "Assert" in ops and "CheckNumerics" in ops


class _PythonCallback(keras.layers.Layer):
    def call(self, x):
        y = tf.py_function(lambda t: t * 1.0, [x], tf.float32)
        return tf.ensure_shape(y, x.shape)


@pytest.mark.slow
def test_py_function_is_flagged_and_not_published(tmp_path):
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(_PythonCallback()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(export.DisallowedOpsError, match="PyFunc"):
        export.export_model(model, "pyfunc", tmp_path, verify=False, verbose=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------- versions, failures


@pytest.mark.slow
def test_versions_increment_prune_and_config(model, tmp_path):
    base = tmp_path / "savedmodels"
    first = export.export_model(model, "a", base, verify=False, verbose=False)
    second = export.export_model(model, "a", base, verify=False, verbose=False)
    assert (first.name, second.name) == ("1", "2")
    assert export.list_versions(base / "a") == [1, 2]  # old version kept
    export.export_model(model, "b", base, verify=False, verbose=False, version_policy="all")
    third = export.export_model(model, "a", base, verify=False, verbose=False, keep_versions=2)
    assert third.name == "3" and export.list_versions(base / "a") == [2, 3]
    assert not [p for p in (base / "a").iterdir() if p.name.startswith(".")]

    config = export.read_models_config(base)
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["a", "b"]
    # The last export used /models paths again; b's policy survived a's re-export.
    assert entries["a"].base_path == "/models/a"
    assert entries["b"].model_version_policy.HasField("all")
    assert entries["a"].model_version_policy.latest.num_versions == 1
    assert tf.saved_model.load(str(third)).signatures["serving_default"] is not None


@pytest.mark.slow
def test_absolute_base_paths(model, tmp_path):
    export.export_model(model, "abs", tmp_path, verify=False, verbose=False, config_base_path=None)
    (entry,) = export.read_models_config(tmp_path).model_config_list.config
    assert entry.base_path == str((tmp_path / "abs").resolve())


@pytest.mark.slow
@pytest.mark.parametrize(
    "step, error",
    [
        ("write_warmup_requests", RuntimeError),  # SavedModel already written
        ("find_disallowed_ops", KeyboardInterrupt),  # all files written, ^C
        ("verify_export", export.ExportVerificationError),
        ("write_models_config", OSError),  # after the rename to a version
    ],
)
def test_failed_export_leaves_base_dir_unchanged(exported, monkeypatch, step, error):
    before = listing(exported.base_dir)
    original = getattr(transaction, step)

    def fail(*args, **kwargs):
        if step == "write_warmup_requests":
            original(*args, **kwargs)  # fail after the file is written
        raise error(f"simulated failure in {step}")

    monkeypatch.setattr(transaction, step, fail)
    with pytest.raises(error, match="simulated"):
        export.export_model(
            exported.model,
            MODEL_NAME,
            exported.base_dir,
            class_names=CLASS_NAMES,
            top_k=TOP_K,
            verify=step == "verify_export",
            verbose=False,
        )
    assert listing(exported.base_dir) == before
    assert tf.saved_model.load(str(exported.version_dir)).signatures["serving_bytes"]


@pytest.mark.slow
def test_failed_export_of_a_new_model_leaves_no_folder(exported, monkeypatch, tmp_path):
    before = listing(exported.base_dir)
    monkeypatch.setattr(transaction, "find_disallowed_ops", lambda d: ["FakeOp: simulated"])
    with pytest.raises(export.DisallowedOpsError, match="FakeOp"):
        export.export_model(exported.model, "brand-new", exported.base_dir, verify=False)
    assert listing(exported.base_dir) == before
    with pytest.raises(export.DisallowedOpsError):
        export.export_model(exported.model, "m", tmp_path / "new" / "base", verify=False)
    assert list(tmp_path.iterdir()) == []  # the folders it created are gone too


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["", "../escape", "a/b", ".hidden", "with space", "x" * 65, "models.config", 3]
)
def test_invalid_model_names_are_rejected_early(model, tmp_path, name):
    with pytest.raises(ValueError, match="Invalid model name"):
        export.export_model(model, name, tmp_path / "base", verify=False)
    assert not (tmp_path / "base").exists()


@pytest.mark.slow
def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="class names"):
        export.export_model(model, "m", tmp_path, class_names=["a"], verify=False)
    with pytest.raises(ValueError, match="version policy"):
        export.export_model(model, "m", tmp_path, version_policy="newest", verify=False)
    with pytest.raises(ValueError, match="keep_versions"):
        export.export_model(model, "m", tmp_path, keep_versions=0, verify=False)
    with pytest.raises(ValueError, match="shape"):
        export.export_model(model, "m", tmp_path, warmup_images=np.zeros((1, 8, 8, 3)))
    assert list(tmp_path.iterdir()) == []


def test_version_policy_specs():
    assert export.parse_version_policy("latest").latest.num_versions == 1
    assert export.parse_version_policy("latest:3").latest.num_versions == 3
    assert export.parse_version_policy("all").HasField("all")
    assert list(export.parse_version_policy("specific:1,4").specific.versions) == [1, 4]
    for bad in ("latest:0", "specific", "all:2", "oldest"):
        with pytest.raises(ValueError):
            export.parse_version_policy(bad)


# ------------------------------------------------------------- mixed precision


@pytest.mark.slow
def test_mixed_precision_grayscale_model_exports_float32_outputs(tmp_path):
    shape = (8, 8, 1)
    model = make_tiny_trained_model(shape, dtype="mixed_bfloat16")
    assert model.output.dtype == "bfloat16"  # bf16 logits: the export must cast
    assert export.tolerance_for(model) == export.MIXED_PRECISION_ATOL
    version = export.export_model(model, "mixed", tmp_path, verify=False, verbose=False)
    loaded = tf.saved_model.load(str(version))
    images = pixel_images(3, shape)
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    for key in ("probabilities", "top_k_scores"):
        assert outputs[key].dtype == tf.float32
    expected = keras_probabilities(model, images)
    np.testing.assert_allclose(
        outputs["probabilities"].numpy(), expected, atol=export.MIXED_PRECISION_ATOL
    )
    # An RGB file is converted to the model's single channel inside the graph.
    rgb = np.repeat(images[:1].astype(np.uint8), 3, axis=-1)[0]
    files = tf.constant([tf.io.encode_png(rgb).numpy()])
    from_rgb = loaded.signatures["serving_bytes"](images_bytes=files)["probabilities"]
    grey = tf.image.rgb_to_grayscale(rgb).numpy()[None].astype(np.float32)
    np.testing.assert_allclose(
        from_rgb.numpy(), keras_probabilities(model, grey), atol=export.MIXED_PRECISION_ATOL
    )


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


# ---------------------------------------------------------- checks, in process


@pytest.mark.slow
def test_serving_checks_catch_a_mismatch(exported):
    images = pixel_images(2)
    png = [tf.io.encode_png(image.astype(np.uint8)).numpy() for image in images]
    right = keras_probabilities(exported.model, images)
    report = serving_checks.run_checks(
        exported.version_dir, images, png, right, atol=1e-5, self_contained=False
    )
    assert report["top_k"] == TOP_K
    wrong = np.roll(right, 1, axis=1)
    with pytest.raises(serving_checks.CheckFailed, match="differ from Keras"):
        serving_checks.run_checks(
            exported.version_dir, images, png, wrong, atol=1e-5, self_contained=False
        )


def test_saved_model_cli_show_parser():
    text = """
signature_def['serving_bytes']:
  The given SavedModel SignatureDef contains the following input(s):
    inputs['images_bytes'] tensor_info:
        dtype: DT_STRING
        shape: (-1)
        name: serving_bytes_images_bytes:0
  The given SavedModel SignatureDef contains the following output(s):
    outputs['probabilities'] tensor_info:
        dtype: DT_FLOAT
        shape: (-1, 4)
        name: StatefulPartitionedCall:0
  Method name is: tensorflow/serving/predict
"""
    parsed = export.parse_saved_model_cli_show(text)
    assert parsed["serving_bytes"]["inputs"] == {"images_bytes": ("DT_STRING", "(-1)")}
    assert parsed["serving_bytes"]["outputs"] == {"probabilities": ("DT_FLOAT", "(-1, 4)")}
    assert parsed["serving_bytes"]["method"] == "tensorflow/serving/predict"


def test_import_blocker_refuses_keras_vit(monkeypatch):
    pytest.importorskip("keras_vit")
    for name in [m for m in sys.modules if m == "keras_vit" or m.startswith("keras_vit.")]:
        monkeypatch.delitem(sys.modules, name)
    blocker = serving_checks.ImportBlocker(("keras_vit",))
    monkeypatch.setattr(sys, "meta_path", [blocker, *sys.meta_path])
    with pytest.raises(ImportError, match="must not be imported"):
        import keras_vit  # noqa: F401
    monkeypatch.delitem(sys.modules, "keras_vit", raising=False)


# -------------------------------------------------------------------- command line


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


# --------------------------------------------------------------- the contract


def test_serving_checks_keeps_the_contract_names():
    """serving_checks.py runs where `pipelines` is blocked, so it has its own copy."""
    for name in (
        "SERVING_DEFAULT",
        "SERVING_BYTES",
        "IMAGES_INPUT",
        "BYTES_INPUT",
        "OUTPUT_KEYS",
        "LABELS_OUTPUT",
        "WARMUP_RELATIVE_PATH",
    ):
        assert getattr(serving_checks, name) == getattr(contract, name), name
    assert contract.INPUT_NAMES == {
        serving_checks.SERVING_DEFAULT: serving_checks.IMAGES_INPUT,
        serving_checks.SERVING_BYTES: serving_checks.BYTES_INPUT,
    }
    # The thin CLI modules re-export the same objects, not copies.
    from pipelines import predict

    assert export.SERVING_BYTES is contract.SERVING_BYTES
    assert predict.INPUT_NAMES is contract.INPUT_NAMES


# ----------------------------------------------------------- compute dtype


def test_compute_dtype_found_in_nested_models():
    """A float32 outer model with a bf16 sub-model: the tolerance must be the mixed one."""
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, dtype="mixed_bfloat16")], name="inner"
    )
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    assert outer.dtype_policy.compute_dtype == "float32"
    assert model_info.compute_dtype_of(outer) == "bfloat16"
    assert model_info.tolerance_for(outer) == contract.MIXED_PRECISION_ATOL
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert model_info.compute_dtype_of(plain) == "float32"
    assert model_info.tolerance_for(plain) == contract.FLOAT32_ATOL


def test_compute_dtype_of_the_package_vit_under_a_global_policy():
    models = pytest.importorskip("keras_vit.models")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = models.vision_transformer(
            "Ti/4", image_shape=(8, 8, 1), num_classes=3, hidden_dim=8, depth=1, mlp_dim=8,
            num_heads=2,
        )
    finally:
        keras.config.set_dtype_policy(previous)
    assert model_info.compute_dtype_of(model) == "float16"


# ------------------------------------------------- train/serve pixel identity

ECHO_SIZE = (12, 12)
#: Grey levels (of 255). Recovering pixels from float32 probabilities is accurate
#: to ~2e-5 here; any other decode or resize (e.g. no antialiasing) is off by
#: whole grey levels.
PIXEL_ATOL = 1e-3
ECHO_SCALE = 64.0


def _pixel_echo_model(image_shape):
    """Logits `[pixels / 64 ..., 0]`: the softmax is invertible, see `_echoed_pixels`."""
    size = int(np.prod(image_shape))
    inputs = keras.Input(image_shape)
    x = keras.layers.Rescaling(1 / ECHO_SCALE)(inputs)  # exact: a power of two
    x = keras.layers.Reshape((size, 1))(x)
    x = keras.layers.ZeroPadding1D((0, 1))(x)  # the constant 0 logit anchors the scale
    return keras.Model(inputs, keras.layers.Flatten()(x))


def _echoed_pixels(probabilities, image_shape):
    """Pixels the echo model saw: `64 * (log p_i - log p_last)`."""
    log_p = np.log(np.asarray(probabilities, np.float64))
    return (ECHO_SCALE * (log_p[:, :-1] - log_p[:, -1:])).reshape(-1, *image_shape)


#: (file name, (H, W, C)) per class; the first file decides the folder's channels.
_FOLDER_CASES = {
    "at-model-size": [("0.png", (12, 12, 3)), ("1.jpg", (12, 12, 3))] * 3,
    "resized": [("0.png", (20, 17, 3)), ("1.jpg", (7, 9, 3)), ("2.png", (12, 30, 3))] * 2,
    "grey-and-rgb-to-rgb": [("0.png", (16, 16, 3)), ("1.png", (9, 14, 1)), ("2.jpg", (12, 12, 1)),
                            ("3.jpg", (25, 8, 3)), ("4.png", (12, 12, 1)), ("5.png", (5, 5, 3))],
    "rgb-to-grey": [("0.png", (30, 12, 1)), ("1.jpg", (12, 12, 3)), ("2.png", (12, 12, 3)),
                    ("3.jpg", (11, 13, 1)), ("4.png", (12, 40, 3)), ("5.png", (12, 12, 1))],
}


def _write_image_folder(root, files, seed):
    """Two class sub-folders of random images; returns [(path, class index)]."""
    rng = np.random.default_rng(seed)
    written = []
    for label, class_name in enumerate(("a_class", "b_class")):
        (root / class_name).mkdir(parents=True)
        for index, (name, shape) in enumerate(files):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            encode = tf.io.encode_png if name.endswith(".png") else tf.io.encode_jpeg
            path = root / class_name / f"{index}_{name}"
            path.write_bytes(encode(pixels).numpy())
            written.append((path, label))
    return written


def _pipeline_examples(data):
    """Every (image, label) the training pipeline yields, over its three splits."""
    pixels, labels = [], []
    for split in (data.train, data.validation, data.test):
        for batch_images, batch_labels in split:
            pixels.append(batch_images.numpy())
            labels.append(batch_labels.numpy())
    return np.concatenate(pixels), np.concatenate(labels)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(_FOLDER_CASES))
def test_training_and_serving_bytes_feed_identical_pixels(tmp_path, case):
    files = _write_image_folder(tmp_path / "data", _FOLDER_CASES[case], seed=len(case))
    data = load_datasets(str(tmp_path / "data"), augment=False, image_size=ECHO_SIZE, cache=False)
    image_shape = data.info.image_shape
    assert image_shape == (*ECHO_SIZE, 1 if case == "rgb-to-grey" else 3)
    trained, trained_labels = _pipeline_examples(data)
    assert len(trained) == len(files)

    version = export.export_model(
        _pixel_echo_model(image_shape), "echo", tmp_path / "savedmodels", verify=False,
        verbose=False,
    )
    serving_bytes = tf.saved_model.load(str(version)).signatures["serving_bytes"]
    file_bytes = [path.read_bytes() for path, _ in files]
    probabilities = serving_bytes(images_bytes=tf.constant(file_bytes))["probabilities"]
    served = _echoed_pixels(probabilities.numpy(), image_shape)

    # Each served file matches exactly one pipeline example of its class.
    matched = []
    for (path, label), pixels in zip(files, served):
        same_class = np.flatnonzero(trained_labels == label)
        errors = np.abs(trained[same_class] - pixels).reshape(len(same_class), -1).max(axis=1)
        best = int(np.argmin(errors))
        assert errors[best] <= PIXEL_ATOL, (path.name, errors[best])
        matched.append(same_class[best])
    assert sorted(matched) == list(range(len(trained)))

    if case != "at-model-size":  # the check is sharp: a resize without antialiasing fails it
        naive = [
            tf.image.resize(tf.io.decode_image(data, image_shape[-1]), ECHO_SIZE).numpy()
            for data in file_bytes
        ]
        assert np.abs(np.stack(naive) - served).max() > 1.0


# ------------------------------------------------------- bad --model files


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
