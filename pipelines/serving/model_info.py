"""What an export needs to know about a Keras classifier, and argument checks.

Example:
    >>> image_shape_of(model), num_classes_of(model), compute_dtype_of(model)
    ((32, 32, 3), 10, 'float32')
"""

import re

from pipelines.serving.contract import FLOAT32_ATOL, MIXED_PRECISION_ATOL

# Letters, digits, "_" and "-": safe as a folder name, in a REST URL
# (/v1/models/<name>:predict) and in models.config, and never "." / "..".
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_LOW_PRECISION = ("float16", "bfloat16")


def validate_model_name(model_name):
    """Return `model_name` if it is a safe model/folder name, else raise ValueError.

    Args:
        model_name: 1-64 letters, digits, `_` or `-`, starting with a letter or digit.

    Example:
        >>> validate_model_name("vit-b16")
        'vit-b16'
    """
    if not isinstance(model_name, str) or not MODEL_NAME_RE.match(model_name):
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
    """Return K, the size of the model's logits `(None, K)`.

    Raises:
        ValueError: other logits; an image-to-sequence model (logits `(None, T, V)`,
            a token per position) is named as one, with how it is exported.

    Example:
        >>> num_classes_of(model)
        10
    """
    shape = tuple(model.output_shape)
    if len(shape) == 3:
        raise ValueError(
            f"{model.name} is an image-to-sequence model (logits of shape {shape}, one token "
            "per position), not a classifier with logits (None, K); sequence models are "
            "exported with their vocabulary and beam search by `keras-vit train --task "
            "sequence` at the end of training (--export-dir), or from Python by "
            "pipelines.serving.sequence.export_sequence_model(model, "
            "CharVocabulary.load('<run folder>/vocab.json'), name)"
        )
    if len(shape) != 2 or shape[1] is None:
        raise ValueError(f"Expected model logits of shape (None, K), got {shape}")
    return int(shape[1])


def _layers_of(layer):
    """`layer` and, recursively, the layers of every nested model (public API only).

    `Model.layers` (functional, sequential and subclassed models) is public; a plain
    `Layer` has no public list of its sub-layers. keras_vit builds sub-layers with
    `dtype=self.dtype_policy`, so a layer's own policy stands for them.
    """
    yield layer
    for child in getattr(layer, "layers", None) or ():
        yield from _layers_of(child)


def compute_dtype_of(model):
    """Return the lowest compute precision of the model's layers.

    Args:
        model: a Keras model; nested models are searched too.

    Returns:
        "float16" or "bfloat16" if any layer computes in it, else "float32".

    Example:
        >>> compute_dtype_of(model)  # built under keras.config.set_dtype_policy("mixed_bfloat16")
        'bfloat16'
    """
    dtypes = {
        str(layer.dtype_policy.compute_dtype)
        for layer in _layers_of(model)
        if getattr(layer, "dtype_policy", None) is not None
    }
    for low in _LOW_PRECISION:
        if low in dtypes:
            return low
    return "float32"


def tolerance_for(model):
    """Absolute tolerance on probabilities between Keras and the SavedModel.

    Float32 models must agree to 1e-4; mixed precision ones (bf16/fp16 compute)
    round differently between eager Keras and the saved graph, so 2e-2.

    Example:
        >>> tolerance_for(float32_model)
        0.0001
    """
    return FLOAT32_ATOL if compute_dtype_of(model) == "float32" else MIXED_PRECISION_ATOL


def check_distinct_names(names):
    """Raise ValueError naming the empty and the repeated class names in `names`.

    A label is what a client reads back in `top_k_labels`: an empty one or two
    classes with the same name cannot be told apart.

    Args:
        names: list of str.

    Example:
        >>> check_distinct_names(["cat", "", "cat"])
        Traceback (most recent call last):
        ValueError: class names must be non-empty and distinct: #2 is empty; 'cat' is repeated (#1, #3)
    """
    problems = [f"#{i} is empty" for i, name in enumerate(names, 1) if not name.strip()]
    for name in dict.fromkeys(name for name in names if name.strip()):
        where = [i for i, other in enumerate(names, 1) if other == name]
        if len(where) > 1:
            problems.append(f"{name!r} is repeated ({', '.join(f'#{i}' for i in where)})")
    if problems:
        raise ValueError("class names must be non-empty and distinct: " + "; ".join(problems))


def check_class_names(class_names, num_classes):
    """Return the class names as strings, or None; raise ValueError unless K distinct,
    non-empty ones.

    Example:
        >>> check_class_names(["cat", "dog"], 2)
        ['cat', 'dog']
    """
    if class_names is None:
        return None
    names = [str(name) for name in class_names]
    check_distinct_names(names)
    if len(names) != num_classes:
        raise ValueError(f"Got {len(names)} class names for a model with {num_classes} classes")
    return names


def check_top_k(top_k, num_classes):
    """Return `top_k` clamped to K; raise ValueError if it is below 1.

    Example:
        >>> check_top_k(5, 3)
        3
    """
    top_k = int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return min(top_k, num_classes)  # top_k larger than K would fail in tf.math.top_k
