"""The serving contract: names defined once, compute dtype, train/serve pixel identity.

`test_training_and_serving_bytes_feed_identical_pixels` loads a generated image
folder through the training pipeline and sends the same files through the exported
`serving_bytes` signature of a model whose probabilities give back its input pixels.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import export, serving_checks
from pipelines.data import load_datasets
from pipelines.serving import contract, model_info


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
    # Mostly grey files: any colour image makes the folder RGB, grey files are converted.
    "mostly-grey-to-rgb": [("0.png", (30, 12, 1)), ("1.jpg", (12, 12, 3)), ("2.png", (12, 12, 3)),
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
    assert image_shape == (*ECHO_SIZE, 3)
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
