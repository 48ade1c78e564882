"""Running a SavedModel's signature in this process: `--saved-model DIR`, no server.

Example:
    >>> local_predict("savedmodels/vit/1", read_images(["cat.jpg"]))["top_k_labels"]
"""

import numpy as np

from pipelines.serving.contract import INPUT_NAMES, SERVING_BYTES, SERVING_DEFAULT
from pipelines.serving.errors import PredictError


def load_saved_model(saved_model_dir):
    """`tf.saved_model.load`, with a PredictError naming a folder that is not a SavedModel.

    Example:
        >>> sorted(load_saved_model("savedmodels/vit/1").signatures)
        ['serving_bytes', 'serving_default']
    """
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(saved_model_dir))
    except OSError as error:
        raise PredictError(f"{saved_model_dir} is not a SavedModel folder: {error}") from None


def saved_model_image_shape(saved_model_dir, loaded=None):
    """`(H, W, C)` of a SavedModel's `serving_default` input.

    Example:
        >>> saved_model_image_shape("savedmodels/vit/1")
        (32, 32, 3)
    """
    loaded = loaded or load_saved_model(saved_model_dir)
    if SERVING_DEFAULT not in loaded.signatures:
        raise PredictError(f"{saved_model_dir} has no signature {SERVING_DEFAULT!r}")
    spec = loaded.signatures[SERVING_DEFAULT].structured_input_signature[1]
    return tuple(int(d) for d in spec[INPUT_NAMES[SERVING_DEFAULT]].shape[1:])


def local_predict(saved_model_dir, images, signature_name=SERVING_BYTES, loaded=None):
    """Run a signature of a SavedModel folder in this process; return the outputs.

    Args:
        saved_model_dir: a version folder, e.g. `savedmodels/vit/1`.
        images: encoded files (`serving_bytes`) or float32 pixels (`serving_default`).
        signature_name: the signature to run.
        loaded: the already loaded SavedModel, if any.

    Example:
        >>> local_predict("savedmodels/vit/1", [png_bytes])["probabilities"].shape
        (1, 10)
    """
    import tensorflow as tf

    from pipelines.serving_checks import short_error

    loaded = loaded or load_saved_model(saved_model_dir)
    if signature_name not in loaded.signatures:
        raise PredictError(f"{saved_model_dir} has no signature {signature_name!r}")
    if signature_name == SERVING_BYTES:
        tensor = tf.constant(list(images), dtype=tf.string, shape=[len(images)])
    else:
        tensor = tf.constant(np.asarray(images, np.float32))
    try:
        outputs = loaded.signatures[signature_name](**{INPUT_NAMES[signature_name]: tensor})
    except tf.errors.InvalidArgumentError as error:
        raise PredictError(f"INVALID_ARGUMENT: {short_error(error.message)}") from None
    return {key: value.numpy() for key, value in outputs.items()}
