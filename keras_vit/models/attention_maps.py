"""Attention weights of every encoder block, and attention rollout, for a built ViT."""

import keras
import numpy as np
from keras import ops

from keras_vit.layers import ClassToken, PatchEmbedding, TokenPooling, TransformerEncoderBlock


def encoder_blocks(model):
    """`model`'s `TransformerEncoderBlock` layers in order; ValueError when it has none."""
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerEncoderBlock)]
    if not blocks:
        raise ValueError(f"model {model.name!r} has no TransformerEncoderBlock")
    return blocks


def block_inputs_model(model):
    """A feature extractor of `model`'s own graph: images -> every encoder block's input tokens.

    Built from the functional graph's nodes (`block.input`), so it follows the
    model's real wiring (class or distillation tokens, position encodings,
    any layer between blocks) instead of assuming a chain of layers.

    Args:
        model: a functional model from `vision_transformer` or `load_checkpoint`.

    Returns:
        A `keras.Model` sharing `model`'s layers, with one output per block.

    Example:
    >>> tokens = block_inputs_model(model)(images)  # list of (B, T, d), one per block
    """
    blocks = encoder_blocks(model)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [block.input for block in blocks],
                       name=f"{model.name}_block_inputs")


def attention_weights(model, images, batch_size=32):
    """Every encoder block's attention weights for `images`, with the model's own variables.

    The tokens entering each block come from the model's functional graph
    (`block_inputs_model`); each block is then called on them with
    `return_attention_scores=True`.

    Args:
        model: a model from `vision_transformer`.
        images: `(B, H, W, C)` array in raw pixel scale.
        batch_size: int. Images per forward pass.

    Returns:
        list of float32 `(B, heads, T, T)` numpy arrays, one per block.

    Example:
    >>> weights = attention_weights(model, x_test[:8])
    >>> len(weights), weights[0].shape  # depth, (8, heads, tokens, tokens)
    """
    blocks = encoder_blocks(model)
    extractor = block_inputs_model(model)
    images = np.asarray(images, dtype="float32")
    per_batch = []
    for start in range(0, len(images), batch_size):
        tokens = extractor(ops.convert_to_tensor(images[start:start + batch_size]),
                           training=False)
        tokens = tokens if isinstance(tokens, (list, tuple)) else [tokens]  # one block
        per_batch.append([
            ops.convert_to_numpy(ops.cast(
                block(x, return_attention_scores=True, training=False)[1], "float32"))
            for block, x in zip(blocks, tokens)])
    return [np.concatenate(block, axis=0) for block in zip(*per_batch)]


def attention_rollout(weights, head_fusion="mean"):
    """Attention rollout (Abnar & Zuidema, 2020) through all blocks.

    Each block's head-fused weights are mixed with the identity for the
    residual path, `0.5 * (A + I)`, re-normalised, and multiplied through
    the blocks.

    Args:
        weights: list of `(B, heads, T, T)` arrays from `attention_weights`.
        head_fusion: `"mean"`, `"max"` or `"min"` over heads.

    Returns:
        `(B, T, T)` array: how much each output token draws from each input token.
    """
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}
    if head_fusion not in fuse:
        raise ValueError(f"`head_fusion` must be one of {sorted(fuse)}; received {head_fusion!r}")
    rollout = None
    for block in weights:
        fused = fuse[head_fusion](np.asarray(block, dtype="float64"), axis=1)
        mixed = 0.5 * (fused + np.eye(fused.shape[-1])[None])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout.astype("float32")


def rollout_maps(model, images, head_fusion="mean"):
    """Per-image attention-rollout maps over the patch grid, each scaled to [0, 1].

    With class-token pooling the map is the class token's row of the rollout;
    with average pooling it is the mean row over the patch tokens.

    Args:
        model: a model from `vision_transformer`.
        images: `(B, H, W, C)` array in raw pixel scale.
        head_fusion: how heads are combined, see `attention_rollout`.

    Returns:
        `(B, grid_rows, grid_cols)` float32 array.

    Example:
    >>> maps = rollout_maps(model, x_test[:4])  # upsample to the image to overlay
    """
    rollout = attention_rollout(attention_weights(model, images), head_fusion)
    patching = next(layer for layer in model.layers if isinstance(layer, PatchEmbedding))
    # Class and distillation tokens precede the patch tokens.
    prefix = sum(isinstance(layer, ClassToken) for layer in model.layers)
    pooling = next((layer for layer in model.layers if isinstance(layer, TokenPooling)), None)
    rows, cols = patching.grid
    if pooling is None or pooling.mode == "token":
        maps = rollout[:, 0, prefix:]
    else:
        maps = rollout[:, prefix:, prefix:].mean(axis=1)
    maps = maps.reshape(-1, rows, cols)
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return ((maps - low) / np.maximum(high - low, 1e-12)).astype("float32")
