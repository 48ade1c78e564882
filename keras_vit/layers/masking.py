"""Attention masks and the masked softmax shared by every attention layer.

Masks follow Keras' convention: a boolean tensor broadcastable to
`(batch, query_length, key_length)` where `True` means "may attend".
"""

from keras import ops


def _valid_lens_mask(valid_lens, query_length, key_length):
    """Boolean `(B, Tq, Tk)` mask from valid lengths of shape `(B,)` or `(B, Tq)`."""
    valid_lens = ops.convert_to_tensor(valid_lens)
    if len(valid_lens.shape) not in (1, 2):
        raise ValueError(
            "`valid_lens` must have shape (batch,) or (batch, query_length); "
            f"received shape {tuple(valid_lens.shape)}"
        )
    valid_lens = ops.cast(valid_lens, "int32")
    if len(valid_lens.shape) == 1:
        valid_lens = ops.expand_dims(valid_lens, -1)  # (B, 1): same for every query
    positions = ops.arange(key_length, dtype="int32")
    # (B, 1 or Tq, Tk): broadcasts against the scores.
    return ops.less(positions[None, None, :], valid_lens[:, :, None])


def causal_mask(query_length, key_length, offset=0):
    """Boolean `(1, Tq, Tk)` mask letting query `i` see keys `j <= i + offset`."""
    rows = ops.arange(query_length, dtype="int32")[:, None] + ops.cast(offset, "int32")
    cols = ops.arange(key_length, dtype="int32")[None, :]
    return ops.expand_dims(ops.greater_equal(rows, cols), 0)


def merge_masks(query_length, key_length, attention_mask=None, valid_lens=None,
                use_causal_mask=False):
    """Combine an explicit mask, valid lengths and causality into one mask.

    Args:
        query_length: int or scalar tensor. Number of queries `Tq`.
        key_length: int or scalar tensor. Number of keys `Tk`.
        attention_mask: optional boolean or 0/1 tensor broadcastable to
            `(B, Tq, Tk)`; `True` means "may attend".
        valid_lens: optional int tensor `(B,)` or `(B, Tq)`; keys at positions
            `>= valid_len` are masked.
        use_causal_mask: bool. Mask keys after the query position.

    Returns:
        A boolean tensor broadcastable to `(B, Tq, Tk)`, or `None` when nothing
        is masked.

    Example:
    >>> mask = merge_masks(3, 3, valid_lens=[2, 3], use_causal_mask=True)
    """
    masks = []
    if attention_mask is not None:
        masks.append(ops.cast(attention_mask, "bool"))
    if valid_lens is not None:
        masks.append(_valid_lens_mask(valid_lens, query_length, key_length))
    if use_causal_mask:
        masks.append(causal_mask(query_length, key_length))
    if not masks:
        return None
    merged = masks[0]
    for mask in masks[1:]:
        merged = ops.logical_and(merged, mask)
    return merged


def masked_softmax(scores, mask=None, axis=-1):
    """Softmax over `axis` in float32 where masked entries get exactly zero weight.

    The softmax always runs in float32 (fill values that are safe in float16
    would still overflow `exp` there); a fully masked row gets all-zero weights
    instead of NaN or a uniform distribution.

    Args:
        scores: tensor of attention scores, any float dtype.
        mask: optional boolean tensor broadcastable to `scores`.
        axis: int. The key axis.

    Returns:
        float32 weights with the shape of `scores`.

    Example:
    >>> weights = masked_softmax(ops.ones((1, 2, 3)), ops.array([[[1, 1, 0]]], "bool"))
    """
    scores = ops.cast(scores, "float32")
    if mask is None:
        return ops.softmax(scores, axis=axis)
    mask = ops.cast(mask, "bool")
    while len(mask.shape) < len(scores.shape):
        # A keys-only `(Tk,)` mask first gains its query axis, then every mask the head axis.
        mask = ops.expand_dims(mask, -3 if len(mask.shape) >= 2 else 0)
    scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
    weights = ops.softmax(scores, axis=axis)
    return ops.where(mask, weights, ops.zeros_like(weights))


def any_valid_key(mask):
    """`(B, Tq, 1)` boolean: whether a query row has at least one visible key."""
    return ops.any(ops.cast(mask, "bool"), axis=-1, keepdims=True)
