"""New `digit_strings` training strings every epoch, composed in the input pipeline.

`digit_strings` (`pipelines.data.digit_strings`) stores a fixed set of
training strings: 20,000 layouts of the ~1,100 training digit images, each
string warped as one canvas by the `affine` augmentation. A string model's
test errors are then almost all single digit images it misreads wherever they
appear (a substitution, never a lost or extra digit): what limits it is how
well it knows each digit, as for the digits classifier, which sees every digit
distorted on its own. `fresh_string_batches` composes new strings for every
batch with the builder's own layout rules (1-5 digits, gaps of 0-`MAX_GAP`
columns, a random margin and baseline, +-`JITTER` rows per digit) from the
same split's digit images, each digit augmented on its own first. Test and
validation strings stay the builder's fixed ones, made of unseen digits.

All in TensorFlow ops on whole batches, seeded per batch (stateless), so the
pipeline keeps up with the model and a run with one seed repeats exactly:

* layout: counts, digit picks, gaps, margin, baseline and jitter as in
  `digit_strings.sample_layout`;
* per-digit augmentation: `batch_augmenter(kind)` on each digit padded by
  `GLYPH_PAD` pixels (so a rotation keeps its corners);
* rendering: each digit placed with two 0/1 selection matrices
  (`rows @ digit @ columns`), the canvas their maximum (`digit_strings.render`);
* length warm-up: over the first `LENGTH_WARMUP_FRACTION` of the epochs the
  longest string grows from 1 digit to `MAX_DIGITS` (`max_digits_in_epoch`).
  From scratch the model spends its first epochs learning to read a digit at
  all (token accuracy ~0.3-0.5 for ~10 of 40 epochs, even with one-digit
  strings); with short strings first it read ~2 epochs sooner, and the
  preset's worst seed ended higher (README, "The preset, measured": a gain
  within the spread of seeds, at no cost).

Batch `i` of the run (epoch `i // num_batches`) is drawn from the stateless
seed `(seed, i)`, so a resumed run (`first_epoch`) gets exactly the batches
the uninterrupted run would have had.

Example:
>>> glyphs, classes = digit_pool(("train",))
>>> batches = fresh_string_batches(glyphs, classes, vocab, max_length=8, batch_size=128,
...                                num_batches=171, seed=0, augmentation="affine", epochs=40)
>>> (images, decoder_tokens), one_hot, weights = next(iter(batches))  # one-digit strings
"""

import numpy as np
import tensorflow as tf

from pipelines.data.digit_strings import (
    CANVAS_SHAPE,
    DIGIT_SIZE,
    JITTER,
    MAX_DIGITS,
    MAX_GAP,
    MIN_DIGITS,
)
from pipelines.data.stages import training_options
from pipelines.sequence.vocab import END, PAD

#: Share of a run's epochs (rounded) over which the longest training string
#: grows from 1 digit to `MAX_DIGITS`; as the learning rate's warm-up share.
LENGTH_WARMUP_FRACTION = 0.1

#: Blank pixels around each digit before its own augmentation: a 10-degree
#: rotation or a 10 % zoom of an 8x8 digit reaches ~1 pixel past its box.
GLYPH_PAD = 2


def digit_pool(splits):
    """uint8 digit images `(N, 8, 8)` and their classes `(N,)` of `uci_digits` splits.

    The pool `digit_strings` draws the strings of those splits from
    (`split_indices`, the fixed digits split).

    Args:
        splits: names among "train", "validation", "test".
    """
    from sklearn.datasets import load_digits

    from pipelines.data.digits import split_indices, to_pixel_scale

    digits = load_digits()
    indices = np.sort(np.concatenate([split_indices()[split] for split in splits]))
    return to_pixel_scale(digits.images)[indices], digits.target[indices].astype(np.int64)


def sample_layouts(seed, batch_size, canvas_shape=CANVAS_SHAPE, max_digits=MAX_DIGITS):
    """Random string layouts, `digit_strings.sample_layout`'s rules, for a batch.

    Args:
        seed: int tensor `(2,)`, a stateless seed.
        batch_size: int.
        canvas_shape: (height, width, channels).
        max_digits: int or int32 scalar tensor in [1, MAX_DIGITS]: counts above
            it are lowered to it (the length warm-up; the other draws are
            unchanged).

    Returns:
        `(counts int32 (B,), boxes int32 (B, MAX_DIGITS, 2))`: digits per string in
        [MIN_DIGITS, MAX_DIGITS] and the top-left (row, col) of each slot (slots
        past a string's count are placed but unused).
    """
    height, width = int(canvas_shape[0]), int(canvas_shape[1])
    count_seed, gap_seed, left_seed, base_seed, jitter_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    counts = tf.random.stateless_uniform((batch_size,), count_seed, MIN_DIGITS, MAX_DIGITS + 1,
                                         tf.int32)
    counts = tf.minimum(counts, tf.cast(max_digits, tf.int32))
    gaps = tf.random.stateless_uniform((batch_size, MAX_DIGITS - 1), gap_seed, 0, MAX_GAP + 1,
                                       tf.int32)
    # Only the gaps between a string's own digits count toward its span.
    gaps = tf.where(tf.range(1, MAX_DIGITS)[None] < counts[:, None], gaps, 0)
    span = counts * DIGIT_SIZE + tf.reduce_sum(gaps, axis=1)
    left = tf.cast(tf.random.stateless_uniform((batch_size,), left_seed)
                   * tf.cast(width - span + 1, tf.float32), tf.int32)
    offsets = tf.concat([tf.zeros((batch_size, 1), tf.int32),
                         tf.cumsum(gaps + DIGIT_SIZE, axis=1)], axis=1)
    cols = left[:, None] + offsets
    lowest = height - DIGIT_SIZE
    if lowest >= 2 * JITTER:
        baseline = tf.random.stateless_uniform((batch_size, 1), base_seed, JITTER,
                                               lowest - JITTER + 1, tf.int32)
    else:
        baseline = tf.zeros((batch_size, 1), tf.int32)
    jitter = tf.random.stateless_uniform((batch_size, MAX_DIGITS), jitter_seed, -JITTER,
                                         JITTER + 1, tf.int32)
    rows = tf.clip_by_value(baseline + jitter, 0, lowest)
    return counts, tf.stack([rows, cols], axis=-1)


def render_strings(glyphs, counts, boxes, canvas_shape=CANVAS_SHAPE, pad=0):
    """Canvases of `glyphs` placed at `boxes`: `digit_strings.render` for a batch.

    Args:
        glyphs: float32 `(B, MAX_DIGITS, S, S)`, digit images with `pad` blank
            pixels on each side (S = DIGIT_SIZE + 2 * pad).
        counts: int32 `(B,)`: slots `>= counts` stay off the canvas.
        boxes: int32 `(B, MAX_DIGITS, 2)`: top-left (row, col) of each digit's
            unpadded 8x8 box.
        canvas_shape: (height, width, channels).
        pad: int.

    Returns:
        float32 `(B, height, width, channels)`: per pixel the maximum over the
        digits covering it, 0 elsewhere (the padding's overhang clipped).
    """
    height, width = int(canvas_shape[0]), int(canvas_shape[1])
    size = DIGIT_SIZE + 2 * pad

    def source(positions, starts):  # glyph pixel each canvas pixel shows; -1: none
        index = positions - starts[..., None] + pad
        return tf.where((index >= 0) & (index < size), index, -1)

    rows = source(tf.range(height)[None, None], boxes[..., 0])  # (B, K, H)
    cols = source(tf.range(width)[None, None], boxes[..., 1])  # (B, K, W)
    select_rows = tf.one_hot(rows, size, dtype=glyphs.dtype)  # (B, K, H, S)
    select_cols = tf.one_hot(cols, size, axis=2, dtype=glyphs.dtype)  # (B, K, S, W)
    placed = tf.matmul(tf.matmul(select_rows, glyphs), select_cols)  # (B, K, H, W)
    used = tf.range(MAX_DIGITS)[None] < counts[:, None]
    placed = tf.where(used[:, :, None, None], placed, 0.0)
    canvas = tf.reduce_max(placed, axis=1)
    return tf.reshape(canvas, (-1, height, width, int(canvas_shape[2])))


def string_targets(digit_ids, counts, max_length):
    """int32 `(B, max_length)`: each string's token ids, `END`, then `PAD`.

    Args:
        digit_ids: int32 `(B, MAX_DIGITS)`, the vocabulary id of each slot's digit.
        counts: int32 `(B,)`.
        max_length: int >= MAX_DIGITS + 1.
    """
    positions = tf.range(max_length)[None]
    padded = tf.pad(digit_ids, [[0, 0], [0, max_length - MAX_DIGITS]])
    return tf.where(positions < counts[:, None], padded,
                    tf.where(positions == counts[:, None], END, PAD))


class StringPool:
    """Digit images to compose strings from, padded once, with their token ids.

    Args:
        glyphs: uint8 `(N, 8, 8)` digit images.
        digit_ids: int `(N,)`: the token id of each image's digit.
        augmentation: one of `SEQUENCE_AUGMENTATIONS`, applied to each digit
            on its own before it is placed.

    Example:
    >>> pool = StringPool(glyphs, ids, "affine")
    >>> pool.compose(tf.constant([0, 1], tf.int64), 4)["images"].shape
    TensorShape([4, 16, 64, 1])
    """

    def __init__(self, glyphs, digit_ids, augmentation="none"):
        glyphs = np.asarray(glyphs, np.uint8)
        if glyphs.ndim != 3 or glyphs.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or not len(glyphs):
            raise ValueError(f"expected a pool of uint8 ({DIGIT_SIZE}, {DIGIT_SIZE}) digit "
                             f"images; received shape {glyphs.shape}")
        if len(digit_ids) != len(glyphs):
            raise ValueError(f"{len(glyphs)} digit images but {len(digit_ids)} digit ids")
        self.size = len(glyphs)
        pad = [(0, 0), (GLYPH_PAD, GLYPH_PAD), (GLYPH_PAD, GLYPH_PAD)]
        self.glyphs = tf.constant(np.pad(glyphs, pad).astype(np.float32))
        self.digit_ids = tf.constant(np.asarray(digit_ids, np.int32))
        self.augment = None
        if augmentation != "none":
            from pipelines.data.augmentation import batch_augmenter

            size = DIGIT_SIZE + 2 * GLYPH_PAD
            self.augment = batch_augmenter(augmentation, (size, size, 1))

    def compose(self, seed, batch_size, canvas_shape=CANVAS_SHAPE, max_digits=MAX_DIGITS):
        """A batch of new strings from stateless `seed` (int `(2,)`), at most `max_digits` long.

        Returns:
            dict of `images` float32 `(B, H, W, C)`, `counts` int32 `(B,)`,
            `boxes` int32 `(B, MAX_DIGITS, 2)`, `picks` int32 `(B, MAX_DIGITS)`
            (pool indices; slots past `counts` unused) and `digit_ids` (their
            token ids).
        """
        layout_seed, pick_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        counts, boxes = sample_layouts(layout_seed, batch_size, canvas_shape, max_digits)
        picks = tf.random.stateless_uniform((batch_size, MAX_DIGITS), pick_seed, 0, self.size,
                                            tf.int32)
        chosen = tf.gather(self.glyphs, picks)  # (B, K, S, S)
        if self.augment is not None:
            size = DIGIT_SIZE + 2 * GLYPH_PAD
            flat = self.augment(tf.reshape(chosen, (-1, size, size, 1)), augment_seed)
            chosen = tf.reshape(flat, (-1, MAX_DIGITS, size, size))
        images = render_strings(chosen, counts, boxes, canvas_shape, GLYPH_PAD)
        return {"images": images, "counts": counts, "boxes": boxes, "picks": picks,
                "digit_ids": tf.gather(self.digit_ids, picks)}


def length_warmup_epochs(epochs):
    """Epochs of the length warm-up in a run of `epochs` (`LENGTH_WARMUP_FRACTION`, rounded)."""
    return int(round(LENGTH_WARMUP_FRACTION * epochs))


def max_digits_in_epoch(epoch, warmup_epochs):
    """The longest string of `epoch` (0-based): 1 digit first, `MAX_DIGITS` after the warm-up.

    The cap rises evenly over `warmup_epochs`; works on ints and int tensors.

    Example:
    >>> [max_digits_in_epoch(epoch, 4) for epoch in range(6)]
    [1, 2, 3, 4, 5, 5]
    """
    if isinstance(warmup_epochs, int) and warmup_epochs <= 0:
        return MAX_DIGITS
    rising = MIN_DIGITS + (epoch * (MAX_DIGITS - MIN_DIGITS)) // warmup_epochs
    if isinstance(epoch, int):
        return min(rising, MAX_DIGITS)
    return tf.minimum(rising, MAX_DIGITS)


def fresh_string_batches(glyphs, classes, vocab, *, max_length, batch_size, num_batches, seed,
                         augmentation="none", canvas_shape=CANVAS_SHAPE, epochs=1,
                         first_epoch=0):
    """Teacher-forcing batches of new strings, `num_batches` per epoch, new every epoch.

    Args:
        glyphs: uint8 `(N, 8, 8)` digit images (`digit_pool`).
        classes: int `(N,)` their digits 0-9.
        vocab: the run's `CharVocabulary` (must hold the pool's digits).
        max_length: int. Target length; at least MAX_DIGITS + 1.
        batch_size, num_batches: batches per epoch and their size (every
            batch full: one shape, one XLA compile).
        seed: int. With the batch's index in the run, seeds every draw.
        augmentation: one of `SEQUENCE_AUGMENTATIONS`, applied to each digit on
            its own (`batch_augmenter` on the padded digit) before placing it.
        canvas_shape: (height, width, channels) of the strings.
        epochs: int >= 1. Epochs of the whole run: sets the length warm-up
            (`length_warmup_epochs`; none for runs under 6 epochs).
        first_epoch: int in [0, epochs). The epoch to start from (a resumed
            run): the dataset holds epochs `first_epoch` to `epochs - 1`.

    Returns:
        `tf.data.Dataset` of `(epochs - first_epoch) * num_batches` elements
        `((images float32 (B, H, W, C) in [0, 255], decoder_tokens int32 (B, T)),
        one-hot targets (B, T, V), weights (B, T))`, the elements of
        `pipelines.sequence.data.make_pipeline`.

    Raises:
        ValueError: `max_length` too short, `first_epoch` outside the run, an
            empty pool, or a digit missing from the vocabulary.
    """
    if max_length < MAX_DIGITS + 1:
        raise ValueError(f"max_length={max_length} is too short for fresh digit strings of up "
                         f"to {MAX_DIGITS} digits plus the end token")
    if not 0 <= first_epoch < epochs:
        raise ValueError(f"first_epoch must be in [0, epochs={epochs}); received {first_epoch}")
    digit_to_id = np.array([vocab.encode(str(digit), 2, "fresh digit strings")[0]
                            for digit in range(10)], np.int32)
    from pipelines.sequence.data import teacher_forcing_example

    pool = StringPool(glyphs, digit_to_id[np.asarray(classes)], augmentation)
    as_example = teacher_forcing_example(vocab.size)
    warmup = length_warmup_epochs(epochs)

    def to_example(index):
        longest = max_digits_in_epoch(tf.cast(index // num_batches, tf.int32), warmup)
        strings = pool.compose(tf.stack([tf.constant(seed, tf.int64), index]), batch_size,
                               canvas_shape, longest)
        return as_example(strings["images"],
                          string_targets(strings["digit_ids"], strings["counts"], max_length))

    indices = tf.data.Dataset.range(first_epoch * num_batches, epochs * num_batches)
    return indices.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
                       ).prefetch(tf.data.AUTOTUNE).with_options(training_options())
