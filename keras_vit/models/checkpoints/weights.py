"""Copies a checkpoint's tensors into a built model: all checks first, then every assignment."""

import numpy as np

from keras_vit.models.checkpoints.architecture import HEAD_PATHS
from keras_vit.models.checkpoints.resample import resample_position_embedding
from keras_vit.models.checkpoints.sources import CheckpointError, name_list

POSITION_PATH = "position_embedding/embedding"


def _check_keys(opened, entries):
    """Missing tensors (needed by `entries`) and unexpected ones (used by no entry) as errors."""
    available = opened.source.keys()
    needed = {key for entry in entries.values() for key in entry.keys}
    missing = needed - available
    if missing:
        raise CheckpointError(f"{opened.source.description} lacks {len(missing)} tensor(s) "
                              f"this architecture needs: {name_list(missing)}")
    known = {key for entry in opened.plan.values() for key in entry.keys} | opened.unused
    unexpected = available - known
    if unexpected:
        raise CheckpointError(f"{opened.source.description} has {len(unexpected)} unexpected "
                              f"tensor(s) (an architecture keras_vit does not build?): "
                              f"{name_list(unexpected)}")


def _position_table(value, arch, model):
    """The checkpoint's position table for the model's grid and prefix tokens."""
    missing_rows = arch.num_prefix_tokens - (arch.position_prefix or 0)
    if missing_rows > 0:  # timm's no_embed_class: prefix tokens get no position, i.e. zeros
        value = np.concatenate([np.zeros((1, missing_rows, value.shape[-1]), "float32"), value],
                               axis=1)
    grid = tuple(model.get_layer("patch_embedding").grid)
    expected_rows = arch.num_prefix_tokens + arch.grid[0] * arch.grid[1]
    if grid != tuple(arch.grid) and value.shape[1] == expected_rows:
        value = resample_position_embedding(value, arch.grid, grid, arch.num_prefix_tokens)
    return value


def _value(path, entry, opened, model):
    arrays = [opened.source.read(key) for key in entry.keys]
    try:
        value = np.asarray(entry.convert(*arrays), dtype="float32")
    except ValueError as error:  # e.g. a reshape into heads that does not fit
        shapes = [a.shape for a in arrays]
        raise CheckpointError(f"tensor(s) {list(entry.keys)} with shape(s) {shapes} do not "
                              f"convert to {path!r}: {error}") from error
    if path == POSITION_PATH:
        value = _position_table(value, opened.architecture, model)
    return value, [a.shape for a in arrays]


def assign_weights(model, opened, load_head=True):
    """Fills every variable of `model` from `opened` (an `OpenedCheckpoint`).

    Head variables stay as built (zeros) unless `load_head`. Reads and checks
    all tensors before assigning any, so a failure leaves `model` untouched.

    Args:
        model: a model built by `build_model` for `opened.architecture`.
        opened: an `OpenedCheckpoint`.
        load_head: bool. Copy the checkpoint's head into the model's.
    """
    variables = {v.path: v for v in model.weights}
    fresh = set() if load_head else set(HEAD_PATHS)
    targets = {p: v for p, v in variables.items() if p not in fresh}
    unmapped = [p for p in targets if p not in opened.plan]
    if unmapped:
        raise CheckpointError(f"no tensor of {opened.source.description} maps to the model "
                              f"variable(s) {name_list(unmapped)}")
    entries = {p: opened.plan[p] for p in targets}
    _check_keys(opened, entries)
    values = {}
    for path, entry in entries.items():
        value, source_shapes = _value(path, entry, opened, model)
        expected = tuple(targets[path].shape)
        if value.shape != expected:
            raise CheckpointError(f"shape mismatch: tensor(s) {list(entry.keys)} of shape(s) "
                                  f"{source_shapes} give {value.shape} for {path!r}, which "
                                  f"needs {expected}")
        values[path] = value
    for path, value in values.items():
        targets[path].assign(value)
    for path in fresh & set(variables):  # the ViT paper's fine-tuning head: zeros
        variables[path].assign(np.zeros(variables[path].shape, "float32"))
