"""Training augmentations on whole batches: flip, shift (pad-and-crop) and rotation/zoom.

Every augmentation of a batch is one affine map per image (output pixel ->
input pixel), and the batch is warped by a single `ImageProjectiveTransformV3`
call: about 20 small TensorFlow ops per batch instead of per image, which is
what made tf.data the slower half of the digits step (1.9x the step's rate
before, `make bench`'s `input`). Shifts and flips are integer maps, and the
bilinear sampler reproduces integer-mapped pixels exactly, so unwarped images
stay sharp. Kinds without rotation ("crop", "flip", "crop_flip") skip the
sampler: `shift_flip` copies the same pixels with one gather,
at half its cost.

All draws are stateless and fed with per-batch seeds, so a run with fixed
seeds repeats exactly, even with a parallel `map`.

Example:
    >>> import tensorflow as tf
    >>> from pipelines.data.augmentation import batch_augmenter
    >>> augment = batch_augmenter("crop_flip", (8, 8, 1))
    >>> augment(tf.zeros((4, 8, 8, 1)), tf.constant([1, 2], tf.int64)).shape
    TensorShape([4, 8, 8, 1])
"""

import numpy as np
import tensorflow as tf

from pipelines.data.options import AUGMENTATIONS

#: "affine": random rotation within +-AFFINE_DEGREES and zoom within +-AFFINE_ZOOM,
#: then the random crop shift; measured on digits in README.md.
AFFINE_DEGREES = 10.0
AFFINE_ZOOM = 0.1
#: Share of images warped; the rest keep their sharp (never interpolated) pixels,
#: which is what evaluation sees.
AFFINE_PROBABILITY = 0.5


def shift_pad(shape):
    """Largest shift, in pixels, of the crop augmentations for images of `shape` (H, W, ...).

    1 pixel for 8x8 digits, 3 for MNIST, 4 for CIFAR: the usual translations.
    """
    return max(1, min(int(shape[0]), int(shape[1])) // 8)


def batch_augmenter(kind, shape):
    """Returns fn(float32 images (B, H, W, C), seed int64[2]) -> augmented images.

    Per image, in this order: "affine" rotates by up to +-AFFINE_DEGREES and
    zooms by up to +-AFFINE_ZOOM with probability AFFINE_PROBABILITY; the
    crop kinds and "affine" shift by a whole number of pixels up to
    `shift_pad(shape)` each way (the uncovered border is 0, as a pad-and-crop
    gives); the flip kinds mirror left-right with probability 1/2. Composed
    into one map per image (`augmentation_matrices`) and applied to the batch
    at once, so a rotated image's corners show the input's pixels where the
    shift brings them in, and 0 only outside the input.

    Args:
        kind: one of `AUGMENTATIONS` other than "none".
        shape: static (H, W, C) of the images.

    Example:
        >>> batch_augmenter("crop", (28, 28, 1))  # shifts by up to 3 pixels
    """
    if kind not in AUGMENTATIONS or kind == "none":
        raise ValueError(f"augmentation={kind!r}: expected one of "
                         f"{[k for k in AUGMENTATIONS if k != 'none']}")
    height, width = int(shape[0]), int(shape[1])
    pad = shift_pad(shape)
    shifts, flips, affine = ("crop" in kind or kind == "affine"), "flip" in kind, kind == "affine"

    def augment(images, seed):
        batch = tf.shape(images)[0]
        angle_seed, zoom_seed, apply_seed, shift_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 5))
        angles = tf.zeros((batch,))
        zooms = tf.ones((batch,))
        if affine:
            apply = tf.random.stateless_uniform((batch,), apply_seed) < AFFINE_PROBABILITY
            angles = tf.where(apply, tf.random.stateless_uniform(
                (batch,), angle_seed, -1.0, 1.0) * (AFFINE_DEGREES * np.pi / 180), 0.0)
            zooms = tf.where(apply, 1.0 + tf.random.stateless_uniform(
                (batch,), zoom_seed, -AFFINE_ZOOM, AFFINE_ZOOM), 1.0)
        offsets = (tf.random.stateless_uniform((batch, 2), shift_seed, -pad, pad + 1, tf.int32)
                   if shifts else tf.zeros((batch, 2), tf.int32))
        mirror = (tf.random.stateless_uniform((batch,), flip_seed) < 0.5 if flips
                  else tf.zeros((batch,), tf.bool))
        if not affine:
            return shift_flip(images, offsets, mirror)
        return warp(images, augmentation_matrices(angles, zooms, offsets, mirror, height, width))

    return augment


def augmentation_matrices(angles, zooms, offsets, mirror, height, width):
    """Per-image 3x3 maps from output pixel (x, y, 1) to input pixel: rotate/zoom, shift, flip.

    The image is rotated by `angles` (radians, counter-clockwise in (x, y) =
    (column, row)) and zoomed by `zooms` about its centre, then moved by
    `offsets` (dy, dx: output pixel (x, y) shows the rotated pixel
    (x + dx, y + dy), as a crop at offset pad + (dy, dx) of the zero-padded
    image), then mirrored left-right where `mirror`.

    Args:
        angles, zooms: float32 (B,).
        offsets: int (B, 2), (dy, dx).
        mirror: bool (B,).
        height, width: the images' size.

    Returns:
        float32 (B, 3, 3).
    """
    angles = tf.cast(angles, tf.float32)
    zooms = tf.cast(zooms, tf.float32)
    offsets = tf.cast(offsets, tf.float32)
    zeros, ones = tf.zeros_like(angles), tf.ones_like(angles)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = tf.cos(angles) / zooms, -tf.sin(angles) / zooms
    b0, b1 = tf.sin(angles) / zooms, tf.cos(angles) / zooms
    rotate = tf.reshape(tf.stack([a0, a1, cx - a0 * cx - a1 * cy,
                                  b0, b1, cy - b0 * cx - b1 * cy,
                                  zeros, zeros, ones], axis=-1), (-1, 3, 3))
    shift = tf.reshape(tf.stack([ones, zeros, offsets[:, 1], zeros, ones, offsets[:, 0],
                                 zeros, zeros, ones], axis=-1), (-1, 3, 3))
    sign = tf.where(mirror, -1.0, 1.0)
    flip = tf.reshape(tf.stack([sign, zeros, tf.where(mirror, width - 1.0, 0.0),
                                zeros, ones, zeros, zeros, zeros, ones], axis=-1), (-1, 3, 3))
    return rotate @ shift @ flip


def warp(images, matrices):
    """Samples `images` (B, H, W, C) float32 bilinearly at `matrices` (B, 3, 3) @ (x, y, 1).

    Outside the image is 0. One `ImageProjectiveTransformV3` call for the batch.
    """
    transforms = tf.reshape(matrices, (-1, 9))[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def shift_flip(images, offsets, mirror):
    """`warp` for maps without rotation or zoom: whole-pixel shifts and left-right flips.

    Output pixel (x, y) of image b is input pixel (x' + dx, y + dy), where
    x' = W - 1 - x if `mirror[b]` else x, and 0 outside the input: what `warp`
    gives for `augmentation_matrices(0, 1, offsets, mirror, H, W)`, to the bit
    (tests/test_data.py). One `tf.gather` of whole pixels (C values each) from
    the flattened batch, with one extra zero pixel that every position outside
    the input points at: a copy, hence exact. Inside tf.data on 2 cores it
    took an image folder's pipeline (40x40 PNGs to 32x32, crop) from ~16,500
    to ~20,800 images/s against 0/1 selection-matrix products (`rows @ image
    @ columns`, which compete with the decoding for the cores), and the
    bilinear sampler costs about twice those (benchmarks/README.md, `input`).

    Args:
        images: float (B, H, W, C) with a static H, W, C.
        offsets: int (B, 2), (dy, dx).
        mirror: bool (B,).

    Returns:
        Tensor like `images`.

    Example:
        >>> shift_flip(tf.ones((2, 8, 8, 1)), tf.constant([[1, 0], [0, -1]]),
        ...            tf.constant([False, True])).shape
        TensorShape([2, 8, 8, 1])
    """
    height, width, channels = (int(d) for d in images.shape[1:])
    offsets = tf.cast(offsets, tf.int32)
    batch = tf.shape(images)[0]
    rows = tf.range(height)[None] + offsets[:, :1]  # (B, H): source row
    columns = tf.range(width)[None]
    columns = tf.where(mirror[:, None], width - 1 - columns, columns) + offsets[:, 1:]  # (B, W)
    inside = (((rows >= 0) & (rows < height))[:, :, None]
              & ((columns >= 0) & (columns < width))[:, None, :])  # (B, H, W)
    # Positions outside the input get the zero pixel below, whatever `source` says there.
    source = ((tf.range(batch) * (height * width))[:, None, None]
              + rows[:, :, None] * width + columns[:, None, :])
    zero_pixel = batch * height * width  # the index of the appended zero pixel
    pixels = tf.concat([tf.reshape(images, (-1, channels)),
                        tf.zeros((1, channels), images.dtype)], axis=0)
    moved = tf.gather(pixels, tf.where(inside, source, zero_pixel))
    return tf.reshape(moved, tf.shape(images))


def rotate_zoom(image, angle, zoom):
    """Rotates `image` (H, W, C) by `angle` radians and zooms by `zoom` about its centre.

    Output pixel (x, y) samples the input bilinearly at
    `R(angle) / zoom @ ((x, y) - centre) + centre`; outside is 0. Uses the core
    `ImageProjectiveTransformV3` op.

    Args:
        image: float32 tensor (H, W, C).
        angle: scalar, radians (counter-clockwise in (x, y) = (column, row)).
        zoom: scalar > 0; > 1 enlarges the content.

    Returns:
        float32 tensor (H, W, C).

    Example:
        >>> rotate_zoom(tf.ones((9, 7, 2)), 0.3, 1.15).shape
        TensorShape([9, 7, 2])
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    matrices = augmentation_matrices(tf.reshape(angle, (1,)), tf.reshape(zoom, (1,)),
                                     tf.zeros((1, 2)), tf.zeros((1,), tf.bool),
                                     tf.cast(height, tf.float32), tf.cast(width, tf.float32))
    return warp(image[None], matrices)[0]
