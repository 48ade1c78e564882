"""The search space of `ViTHyperModel`: defaults, user overrides, validation.

A user space is a dict `{key: spec}` (see `keras_vit.tuning`); `resolve_search_space`
checks every value against the image and the ViT's rules (patch sizes dividing
the image, head counts dividing a width, rates in [0, 1), known categories) and
merges it into `DEFAULT_SEARCH_SPACE`, so a bad space fails before any trial.

Example:
>>> space = resolve_search_space((8, 8, 1), {"depth": [2, 4], "pooling": "gap"})
>>> width_head_pairs(space)[:3]
['64x2', '64x4', '128x2']
"""

import difflib

from keras_vit.layers.pooling import POOLING_MODES
from keras_vit.models.vit import POSITION_EMBEDDINGS

#: The search space used for keys a user does not override. `patch_size: None`
#: means every patch size dividing the image into 4 to 256 patches.
DEFAULT_SEARCH_SPACE = {
    "patch_size": None,
    "depth": {"values": [2, 4, 6], "default": 4},
    "hidden_dim": {"values": [64, 128, 192], "default": 64},
    "num_heads": {"values": [2, 3, 4], "default": 4},
    "mlp_ratio": {"values": [2, 4], "default": 2},
    "pooling": ["gap", "token"],
    "dropout": [0.0, 0.1],
    "drop_path": [0.0, 0.1],
    "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log", "default": 1e-3},
    "weight_decay": {"min": 1e-3, "max": 0.1, "sampling": "log", "default": 0.05},
    "label_smoothing": [0.1, 0.0],
    "batch_size": {"values": [32, 64, 128], "default": 64},
}

#: Keys searchable on request only; left out of the space, they take this value.
OPTIONAL_SEARCH_KEYS = {"position_embedding": "learned", "attention_dropout": 0.0}

#: Patch counts the default patch sizes keep between (inclusive).
DEFAULT_PATCH_COUNT_RANGE = (4, 256)

WIDTH_HEADS = "width_heads"
SAMPLINGS = ("linear", "log", "reverse_log")

_INT_KEYS = ("patch_size", "depth", "hidden_dim", "num_heads", "batch_size")
_RATE_KEYS = ("dropout", "drop_path", "attention_dropout", "label_smoothing")
_CATEGORIES = {"pooling": POOLING_MODES, "position_embedding": POSITION_EMBEDDINGS}
# Keys that become part of the model architecture and must be known exactly
# (a list), not sampled from a continuous range.
_LIST_ONLY_KEYS = ("patch_size", "hidden_dim", "num_heads")
# Order of the hyperparameters: architecture first, then optimisation. Grid
# search varies the last one fastest.
HYPERPARAMETER_ORDER = ("patch_size", "depth", WIDTH_HEADS, "mlp_ratio", "pooling", "position_embedding",
          "dropout", "attention_dropout", "drop_path", "learning_rate", "weight_decay",
          "label_smoothing", "batch_size")


# ------------------------------------------------------------- search-space parsing


def default_patch_sizes(image_shape, patch_counts=DEFAULT_PATCH_COUNT_RANGE):
    """Patch sizes dividing both image sides into `patch_counts` patches (inclusive).

    Falls back to every common divisor when none gives a patch count in range.

    Args:
        image_shape: (height, width, channels).
        patch_counts: (min, max) number of patches.

    Returns:
        Sorted list of int patch sizes.

    Example:
    >>> default_patch_sizes((8, 8, 1))
    [1, 2, 4]
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    divisors = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    low, high = patch_counts
    sizes = [p for p in divisors if low <= (height // p) * (width // p) <= high]
    return sizes or divisors


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key, value):
    """Returns `value` in its canonical type, or raises naming the key and value."""
    if key in _INT_KEYS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"search space {key!r}: {value!r} is not a positive integer")
        return value
    if key in _CATEGORIES:
        if value not in _CATEGORIES[key]:
            raise ValueError(f"search space {key!r}: {value!r} is not one of "
                             f"{list(_CATEGORIES[key])}")
        return value
    if not _is_number(value):
        raise ValueError(f"search space {key!r}: {value!r} is not a number")
    if key in _RATE_KEYS and not 0.0 <= value < 1.0:
        raise ValueError(f"search space {key!r}: {value!r} is not in [0, 1)")
    if key == "weight_decay" and value < 0:
        raise ValueError(f"search space {key!r}: {value!r} is negative")
    if key in ("learning_rate", "mlp_ratio") and not value > 0:
        raise ValueError(f"search space {key!r}: {value!r} is not positive")
    # Rates and learning rates are floats even when written as 0 or 1.
    return value if key == "mlp_ratio" else float(value)


def _unique(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _choice(key, values, default=None):
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"search space {key!r}: empty list of choices; give at least one "
                         "value (or a single value to fix it)")
    values = _unique(_check_value(key, v) for v in values)
    if default is None:
        default = values[0]
    default = _check_value(key, default)
    if default not in values:
        raise ValueError(f"search space {key!r}: default {default!r} is not one of {values}")
    if all(_is_number(v) for v in values):
        if any(isinstance(v, float) for v in values):  # keras-tuner wants one type
            values, default = [float(v) for v in values], float(default)
        values = sorted(values)  # ordered choices let Bayesian optimisation interpolate
    if len(values) == 1:
        return {"value": values[0]}
    return {"values": values, "default": default}


def _range(key, spec):
    unknown = set(spec) - {"min", "max", "step", "sampling", "default"}
    if unknown or "min" not in spec or "max" not in spec:
        raise ValueError(f"search space {key!r}: a range needs 'min' and 'max' (optional "
                         f"'step', 'sampling', 'default'); received {spec!r}")
    low, high = _check_value(key, spec["min"]), _check_value(key, spec["max"])
    if low > high:
        raise ValueError(f"search space {key!r}: min {low!r} is larger than max {high!r}")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise ValueError(f"search space {key!r}: sampling {sampling!r} is not one of "
                         f"{list(SAMPLINGS)}")
    if sampling != "linear" and low <= 0:
        raise ValueError(f"search space {key!r}: {sampling} sampling needs min > 0; "
                         f"received min={low!r}")
    step = spec.get("step")
    if step is not None and not (_is_number(step) and step > 0):
        raise ValueError(f"search space {key!r}: step {step!r} is not a positive number")
    if key in _LIST_ONLY_KEYS:
        if step is None or sampling != "linear":
            raise ValueError(f"search space {key!r}: give a list of values, or a range with a "
                             f"linear 'step'; received {spec!r}")
        return _choice(key, list(range(low, high + 1, int(step))), spec.get("default"))
    default = _check_value(key, spec.get("default", low))
    if not low <= default <= high:
        raise ValueError(f"search space {key!r}: default {default!r} is outside "
                         f"[{low!r}, {high!r}]")
    if key in _INT_KEYS and step is not None:
        step = int(step)
    if key not in _INT_KEYS:
        low, high, default = float(low), float(high), float(default)
    return {"min": low, "max": high, "step": step, "sampling": sampling, "default": default}


def _parse_spec(key, spec):
    """One user spec -> `{"value"}`, `{"values", "default"}` or a range dict."""
    if isinstance(spec, dict):
        if "values" in spec:
            extra = set(spec) - {"values", "default"}
            if extra:
                raise ValueError(f"search space {key!r}: unexpected {sorted(extra)} next to "
                                 "'values'")
            return _choice(key, spec["values"], spec.get("default"))
        return _range(key, spec)
    if isinstance(spec, (list, tuple)):
        return _choice(key, list(spec))
    if spec is None:
        raise ValueError(f"search space {key!r}: None is only allowed for keys with a default")
    return {"value": _check_value(key, spec)}


def values_of(param):
    return param["values"] if "values" in param else [param["value"]]


def resolve_search_space(image_shape, search_space=None):
    """Validates `search_space` overrides and merges them into the default space.

    Runs in `ViTHyperModel.__init__`, so a bad space fails before any trial.

    Args:
        image_shape: (height, width, channels) of the images.
        search_space: dict of overrides (see the module docstring) or None.

    Returns:
        dict key -> normalised spec (`{"value": v}`, `{"values": [...],
        "default": v}` or `{"min", "max", "step", "sampling", "default"}`), JSON
        serialisable, with `patch_size`, `hidden_dim` and `num_heads` always lists.

    Raises:
        ValueError: an unknown key, an empty choice, a value of the wrong type or
            range, a patch size that does not divide the image, a head count that
            divides none of the widths; the message names the value.

    Example:
    >>> resolve_search_space((8, 8, 1), {"depth": [2, 4]})["depth"]
    {'values': [2, 4], 'default': 2}
    """
    search_space = dict(search_space or {})
    known = list(DEFAULT_SEARCH_SPACE) + list(OPTIONAL_SEARCH_KEYS)
    for key in search_space:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown search space key {key!r}{hint}; expected one of {known}")
    height, width = int(image_shape[0]), int(image_shape[1])
    space = {}
    for key in known:
        spec = search_space.get(key)
        if spec is None and key in OPTIONAL_SEARCH_KEYS:
            continue  # not searched: the model keeps its fixed default
        if spec is None and key == "patch_size":
            spec = default_patch_sizes(image_shape)
        elif spec is None:
            spec = DEFAULT_SEARCH_SPACE[key]
        space[key] = _parse_spec(key, spec)

    for patch in values_of(space["patch_size"]):
        if height % patch or width % patch:
            raise ValueError(f"search space 'patch_size': {patch} does not divide the image "
                             f"size {height}x{width}; divisors of both sides: "
                             f"{default_patch_sizes(image_shape, (1, height * width))}")
    widths = values_of(space["hidden_dim"])
    for heads in values_of(space["num_heads"]):
        if all(w % heads for w in widths):
            raise ValueError(f"search space 'num_heads': {heads} heads divide none of the "
                             f"widths hidden_dim={widths}")
    return space


def width_head_pairs(space):
    """Valid `"WIDTHxHEADS"` strings of a resolved space, width then heads ascending.

    Example:
    >>> width_head_pairs(resolve_search_space((8, 8, 1), {"hidden_dim": [32], "num_heads": [2, 4]}))
    ['32x2', '32x4']
    """
    return [f"{w}x{h}" for w in sorted(values_of(space["hidden_dim"]))
            for h in sorted(values_of(space["num_heads"])) if w % h == 0]


def split_width_heads(value):
    """`"64x4"` -> `(64, 4)`."""
    width, heads = str(value).split("x")
    return int(width), int(heads)


def register_hyperparameter(hp, name, param):
    """Declares one hyperparameter on `hp` and returns its current value."""
    if "value" in param:
        return hp.Fixed(name, param["value"])
    if "values" in param:
        return hp.Choice(name, param["values"], default=param["default"])
    kind = hp.Int if isinstance(param["min"], int) else hp.Float
    return kind(name, param["min"], param["max"], step=param["step"],
                sampling=param["sampling"], default=param["default"])

