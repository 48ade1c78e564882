"""Argument and static-shape checks that name the bad value.

Integers may be Python or numpy integers (`numbers.Integral`, not `bool`)
and are stored as plain `int`; numbers may be any `numbers.Real` and are
stored as plain `float`.
"""

import math
import numbers

import keras
import numpy as np


def is_int(value):
    """Whether `value` is a Python or numpy integer (not a `bool`)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def numpy_int_as_int(value):
    """A numpy integer scalar (or 0-d integer array) as a Python `int`; anything else as is.

    Keras turns numpy call arguments into tensors before `call`, where their
    values can no longer be read; layers apply this in `__call__` to integer
    arguments that must stay Python ints (static shapes, range checks).
    """
    if isinstance(value, (np.integer, np.ndarray)) and np.ndim(value) == 0 \
            and np.issubdtype(np.asarray(value).dtype, np.integer):
        return int(value)
    return value


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name, value):
    """Raise ValueError unless `value` is an integer > 0; return it as an `int`."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}")
    return int(value)


def check_non_negative_int(name, value):
    """Raise ValueError unless `value` is an integer >= 0; return it as an `int`."""
    if not is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0; received {name}={value!r}")
    return int(value)


def check_pair(name, value, parts="(height, width)"):
    """A positive integer or a pair of them as an `(int, int)` tuple, else ValueError."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            is_int(v) and v > 0 for v in value):
        raise ValueError(f"`{name}` must be a positive integer or a pair {parts} of positive "
                         f"integers; received {name}={value!r}")
    return tuple(int(v) for v in value)


def check_rate(name, value):
    """Raise ValueError unless `value` is a number in [0, 1); return it as a `float`."""
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1); received {name}={value!r}")
    return float(value)


def check_positive_float(name, value):
    """Raise ValueError unless `value` is a finite number > 0; return it as a `float`."""
    if not _is_number(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number > 0; received {name}={value!r}")
    return float(value)


def check_activation(name, value):
    """`keras.activations.get(value)`, or a ValueError naming `name` and `value`."""
    try:
        return keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be a Keras activation name or a callable; received "
                         f"{name}={value!r}") from error


def check_cache_index(index, steps, cache_length):
    """Raise ValueError when a Python/numpy integer `index` puts `steps` past the cache.

    Tensor indices (and unknown static sizes) are not checked: graph code
    cannot raise on values.
    """
    if not is_int(index):
        return
    if index < 0 or (steps is not None and cache_length is not None
                     and index + steps > cache_length):
        raise ValueError("`cache_update_index` must be >= 0 and leave room for the new steps "
                         f"(index + steps <= cache length); received cache_update_index="
                         f"{index!r} for {steps} step(s) and a cache of length {cache_length}")


def check_rank(name, shape, rank, expected="(batch, length, features)"):
    """Raise ValueError unless the static `shape` has `rank` axes."""
    if len(shape) != rank:
        raise ValueError(f"`{name}` must have shape {expected}; received shape {tuple(shape)}")


def static_shape(x):
    """The static shape of a tensor, array or nested list, as a tuple (`None` = unknown)."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _differ(a, b):
    return a is not None and b is not None and a != b


def check_same_dim(name, shape, axis, other_name, other_shape, other_axis=None, what="size"):
    """Raise ValueError when `shape[axis]` and `other_shape[other_axis]` are known and differ."""
    other_axis = axis if other_axis is None else other_axis
    if _differ(shape[axis], other_shape[other_axis]):
        raise ValueError(f"`{name}` {what} {shape[axis]} does not match `{other_name}` {what} "
                         f"{other_shape[other_axis]}; received {name} shape {tuple(shape)} and "
                         f"{other_name} shape {tuple(other_shape)}")


def check_same_shape(name, shape, other_name, other_shape):
    """Raise ValueError unless two static shapes have one rank and agree where both are known."""
    shape, other_shape = tuple(shape), tuple(other_shape)
    if len(shape) != len(other_shape) or any(map(_differ, shape, other_shape)):
        raise ValueError(f"`{name}` must have the shape of `{other_name}`; received {name} shape "
                         f"{shape} and {other_name} shape {other_shape}")


def check_broadcastable(name, shape, target, target_text):
    """Raise ValueError unless static `shape` broadcasts (numpy rules) to `target`.

    `None` (unknown) dimensions on either side are accepted.
    """
    shape = tuple(shape)
    if len(shape) > len(target) or any(
            dim != 1 and _differ(dim, want)
            for dim, want in zip(reversed(shape), reversed(tuple(target)))):
        raise ValueError(f"`{name}` must broadcast to {target_text} = {tuple(target)}; "
                         f"received shape {shape}")


def check_attention_inputs(query, value, key, attention_mask=None, valid_lens=None,
                           same_query_key_features=False):
    """Static-shape checks of an attention call's `(B, T, D)` inputs and masks.

    Query, value and key must be rank 3 with one batch size; key and value one
    length (and, with `same_query_key_features`, query and key one feature
    size); `attention_mask` must broadcast to `(B, Tq, Tk)`, `valid_lens` to
    `(B,)` or `(B, Tq)`. Unknown (`None`) dimensions pass.
    """
    for name, tensor in (("query", query), ("value", value), ("key", key)):
        check_rank(name, tensor.shape, 3)
    check_same_dim("value", value.shape, 0, "query", query.shape, what="batch size")
    check_same_dim("key", key.shape, 0, "query", query.shape, what="batch size")
    check_same_dim("key", key.shape, 1, "value", value.shape, what="length")
    if same_query_key_features:
        check_same_dim("key", key.shape, 2, "query", query.shape, what="feature size")
    batch, query_length, key_length = query.shape[0], query.shape[1], key.shape[1]
    if attention_mask is not None:
        check_broadcastable("attention_mask", static_shape(attention_mask),
                            (batch, query_length, key_length), "(batch, query_length, key_length)")
    if valid_lens is not None:
        shape = static_shape(valid_lens)
        if len(shape) == 1:
            check_broadcastable("valid_lens", shape, (batch,), "(batch,)")
        elif len(shape) == 2:
            check_broadcastable("valid_lens", shape, (batch, query_length),
                                "(batch, query_length)")
        else:
            raise ValueError("`valid_lens` must have shape (batch,) or (batch, query_length) = "
                             f"{(batch,)} or {(batch, query_length)}; received shape {shape}")
