"""Writing a slice into a tensor at a dynamic position, with ops every runtime has.

`keras.ops.slice_update` lowers, on the TensorFlow backend, to
`XlaDynamicUpdateSlice`: an XLA-only op that a stock TF Serving model server
does not have, so a SavedModel decoding with it could not be served. The
decoding loops and the attention key/value cache write through `write_slice`
instead: a select between `x` and the update broadcast along `axis` (plus a
gather of the update rows when there are several), core ops on every
backend. Each write touches the whole axis (O(length)), which for decoder
caches of tens to hundreds of positions is small next to the attention itself.
"""

from keras import ops


def write_slice(x, start, updates, axis):
    """`x` with `updates` written at positions `start, ..., start + n - 1` along `axis`.

    Same values as `ops.slice_update(x, [0, ..., start, ..., 0], updates)` when
    `updates` matches `x` on every other axis.

    Args:
        x: tensor.
        start: int or scalar int tensor; `start + n <= x.shape[axis]`.
        updates: tensor shaped like `x` except `n` along `axis`.
        axis: int >= 0.

    Returns:
        A tensor like `x`.

    Example:
    >>> write_slice(np.zeros((2, 4)), 1, np.ones((2, 2)), axis=1)  # [[0, 1, 1, 0], [0, 1, 1, 0]]
    """
    length = ops.shape(x)[axis]
    count = ops.shape(updates)[axis]
    shape = [1] * len(x.shape)
    shape[axis] = length
    positions = ops.reshape(ops.arange(length, dtype="int32"), shape)
    if count == 1:
        # One position (a decoding step): the update broadcasts along `axis`, no gather.
        return ops.where(ops.equal(positions, ops.cast(start, "int32")), ops.cast(updates, x.dtype), x)
    offset = positions - ops.cast(start, "int32")
    inside = ops.logical_and(ops.greater_equal(offset, 0), ops.less(offset, count))
    rows = ops.take(updates, ops.clip(ops.reshape(offset, (-1,)), 0, count - 1), axis=axis)
    return ops.where(inside, ops.cast(rows, x.dtype), x)
