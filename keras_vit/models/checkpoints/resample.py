"""Position-embedding resampling for a new patch grid (new image size or patch size)."""

import numpy as np
from keras import ops

RESAMPLE_METHODS = ("bicubic", "bilinear", "nearest")


def _grid(name, value):
    grid = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(grid) != 2 or min(grid) <= 0:
        raise ValueError(f"`{name}` must be a positive int or (rows, cols); received {value!r}")
    return grid


def resample_position_embedding(embedding, from_grid, to_grid, num_prefix_tokens=1,
                                method="bicubic", antialias=True):
    """Resizes a learned position embedding from one patch grid to another.

    The first `num_prefix_tokens` rows (class / distillation tokens) are kept
    as they are; the remaining `rows * cols` rows are laid out on the row-major
    patch grid, resized as a `D`-channel image, and flattened back. The resize
    is `keras.ops.image.resize` (TensorFlow's and JAX's scale-and-translate
    resampling: Keys cubic kernel, a = -0.5, half-pixel centres, antialiased
    when shrinking), i.e. big_vision's `resample_posemb` with `jax.image.resize`.
    timm's `resample_abs_pos_embed` uses PyTorch's bicubic kernel (a = -0.75)
    and gives slightly different values for the same grids.

    Args:
        embedding: array `(1, P + rows * cols, D)` or `(P + rows * cols, D)`.
        from_grid: int or (int, int). The embedding's patch grid `(rows, cols)`.
        to_grid: int or (int, int). The new patch grid.
        num_prefix_tokens: int >= 0. Leading rows that are not grid positions.
        method: `"bicubic"`, `"bilinear"` or `"nearest"`.
        antialias: bool. Widen the kernel when shrinking (as `jax.image.resize`).

    Returns:
        float32 numpy array with the input's rank and `P + new_rows * new_cols` rows.

    Example:
    >>> table = np.random.rand(1, 1 + 14 * 14, 768).astype("float32")   # ViT-B/16 at 224
    >>> resample_position_embedding(table, 14, 24).shape                 # for 384x384
    (1, 577, 768)
    """
    from_grid, to_grid = _grid("from_grid", from_grid), _grid("to_grid", to_grid)
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"`method` must be one of {RESAMPLE_METHODS}; received {method!r}")
    if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be an int >= 0; received {num_prefix_tokens!r}")
    table = np.asarray(embedding, dtype="float32")
    batched = table.ndim == 3
    if batched and table.shape[0] != 1 or table.ndim not in (2, 3):
        raise ValueError(f"`embedding` must have shape (1, tokens, D) or (tokens, D); "
                         f"received {table.shape}")
    table = table[0] if batched else table
    expected = num_prefix_tokens + from_grid[0] * from_grid[1]
    if table.shape[0] != expected:
        raise ValueError(f"`embedding` has {table.shape[0]} rows; from_grid={from_grid} with "
                         f"num_prefix_tokens={num_prefix_tokens} needs {expected}")
    prefix, grid = table[:num_prefix_tokens], table[num_prefix_tokens:]
    if from_grid != to_grid:
        image = grid.reshape(1, from_grid[0], from_grid[1], -1)
        image = ops.image.resize(image, to_grid, interpolation=method, antialias=antialias,
                                 data_format="channels_last")
        grid = ops.convert_to_numpy(image).reshape(to_grid[0] * to_grid[1], -1)
    result = np.concatenate([prefix, grid.astype("float32")], axis=0)
    return result[None] if batched else result
