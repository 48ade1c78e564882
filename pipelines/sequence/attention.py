"""Where the decoder looks: cross-attention over the image for each generated token.

The generated tokens are fed back through the decoder (teacher forcing on the
model's own output, which reproduces the cached greedy steps) and every decoder
block's cross-attention scores `(B, heads, T, S)` are read with
`return_attention_scores=True`; the figure shows the last block's, averaged
over heads, as a heat map over the patch grid of the image.

Example:
>>> maps = cross_attention_maps(model, images, tokens)   # (B, T, grid_h, grid_w)
>>> plot_cross_attention(images, tokens, maps, vocab, "runs/x/cross_attention.png")
"""

import numpy as np

from pipelines.sequence.vocab import END, START


def patch_grid(model, image_shape):
    """`(rows, cols)` of the model's patch grid (its `patch_embedding` layer), any patch shape.

    Example:
    >>> patch_grid(model, (16, 64, 1))   # 16x4 strips
    (1, 16)
    """
    return tuple(model.get_layer("patch_embedding").grid_size(tuple(image_shape)))


def cross_attention_scores(model, images, tokens):
    """Per decoder block, cross-attention `(B, heads, T, S)` for the decoder inputs of `tokens`.

    Args:
        model: an `image_to_sequence` model.
        images: float32 `(B, H, W, C)`.
        tokens: int `(B, T)` generated tokens; the decoder reads `[START] + tokens[:-1]`.
    """
    from keras import ops

    from keras_vit.models.decoder_steps import decoder_steps

    steps = decoder_steps(model)
    memory, mask = steps.encode(images)
    prefix = np.concatenate([np.full((len(tokens), 1), START, np.int32),
                             np.asarray(tokens, np.int32)[:, :-1]], axis=1)
    x = steps.position(steps.scale(steps.embedding(ops.convert_to_tensor(prefix))))
    scores = []
    for block in steps.blocks:
        x, attention = block(x, memory, encoder_attention_mask=mask,
                             return_attention_scores=True, training=False)
        scores.append(ops.convert_to_numpy(ops.cast(attention["cross_attention"], "float32")))
    return scores


def cross_attention_maps(model, images, tokens):
    """Last block's cross-attention averaged over heads: `(B, T, rows, cols)`."""
    last = cross_attention_scores(model, images, tokens)[-1].mean(axis=1)
    rows, cols = patch_grid(model, images.shape[1:])
    extra = last.shape[-1] - rows * cols  # a class token first (pooling="token" encoders)
    return last[..., extra:].reshape(*last.shape[:2], rows, cols)


def generated_length(row):
    """Tokens up to and including the first end token (all of them without one)."""
    ends = np.flatnonzero(np.asarray(row) == END)
    return int(ends[0]) + 1 if len(ends) else len(row)


def plot_cross_attention(images, tokens, maps, vocab, path, texts=None):
    """One row per image: the image, then its cross-attention for each generated token.

    Args:
        images: float32 `(B, H, W, C)` pixels in [0, 255].
        tokens: int `(B, T)` generated tokens.
        maps: `(B, T, rows, cols)` from `cross_attention_maps`.
        vocab: the `CharVocabulary`.
        path: PNG file to write.
        texts: optional true texts, shown in the first column's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [generated_length(row) for row in tokens]
    columns = 1 + max(lengths)
    figure, axes = plt.subplots(len(images), columns, figsize=(1.9 * columns, 1.0 * len(images)
                                                                + 0.4), squeeze=False)
    strings = vocab.id_to_string()
    for row, image in enumerate(np.asarray(images, np.float32) / 255.0):
        height, width = image.shape[:2]
        shown = image[..., 0] if image.shape[-1] == 1 else np.clip(image[..., :3], 0, 1)
        cmap = "gray" if image.shape[-1] == 1 else None
        title = f"read {vocab.decode(tokens[row])!r}"
        if texts is not None:
            title += f" (true {texts[row]!r})"
        axes[row, 0].imshow(shown, cmap=cmap, vmin=0, vmax=1)
        axes[row, 0].set_title(title, fontsize=7)
        for step in range(lengths[row]):
            axis = axes[row, step + 1]
            axis.imshow(shown, cmap=cmap, vmin=0, vmax=1)
            axis.imshow(maps[row, step], cmap="jet", alpha=0.5, interpolation="bilinear",
                        extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            token = int(tokens[row][step])
            axis.set_title(strings[token] if token != END else "<end>", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle("decoder cross-attention (last block, mean over heads) per generated token",
                    fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
