"""Training augmentations: flip, pad-and-crop shift, and a random rotation/zoom.

All draws are stateless and fed with per-example seeds, so a run with fixed
seeds repeats exactly, even with a parallel `map`.

Example:
    >>> import tensorflow as tf
    >>> from pipelines.data.augmentation import augmenter
    >>> augment = augmenter("crop_flip", (8, 8, 1))
    >>> augment(tf.zeros((8, 8, 1)), tf.constant([1, 2], tf.int64)).shape
    TensorShape([8, 8, 1])
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


def augmenter(kind, shape):
    """Returns fn(float32 image (H, W, C), seed int64[2]) -> augmented image.

    Args:
        kind: one of `AUGMENTATIONS` other than "none".
        shape: static (H, W, C) of the images.

    Example:
        >>> augmenter("crop", (28, 28, 1))  # shifts by up to 3 pixels
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation={kind!r}: expected one of {list(AUGMENTATIONS)}")
    height, width, channels = (int(d) for d in shape)
    # 1 pixel for 8x8 digits, 3 for MNIST, 4 for CIFAR: the usual translations.
    pad = max(1, min(height, width) // 8)

    def augment(image, seed):
        crop_seed, flip_seed, affine_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        if kind == "affine":
            image = random_rotate_zoom(image, affine_seed)
        if "crop" in kind or kind == "affine":
            padded = tf.image.pad_to_bounding_box(
                image, pad, pad, height + 2 * pad, width + 2 * pad
            )
            image = tf.image.stateless_random_crop(
                padded, (height, width, channels), seed=crop_seed
            )
        if "flip" in kind:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image

    return augment


def random_rotate_zoom(image, seed):
    """With probability AFFINE_PROBABILITY, rotates by up to +-AFFINE_DEGREES and zooms
    by up to +-AFFINE_ZOOM about the centre.

    Stateless draws per image, so `deterministic=True` runs repeat exactly.

    Args:
        image: float32 (H, W, C).
        seed: int64[2] stateless seed.

    Example:
        >>> random_rotate_zoom(tf.zeros((8, 8, 1)), tf.constant([0, 1], tf.int64)).shape
        TensorShape([8, 8, 1])
    """
    angle_seed, zoom_seed, apply_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    angle = tf.random.stateless_uniform((), angle_seed, -1.0, 1.0) * (AFFINE_DEGREES * np.pi / 180)
    zoom = 1.0 + tf.random.stateless_uniform((), zoom_seed, -AFFINE_ZOOM, AFFINE_ZOOM)
    apply = tf.random.stateless_uniform((), apply_seed) < AFFINE_PROBABILITY
    return tf.where(apply, rotate_zoom(image, angle, zoom), image)


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
    angle = tf.cast(angle, tf.float32)
    zoom = tf.cast(zoom, tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = tf.cos(angle) / zoom, -tf.sin(angle) / zoom
    b0, b1 = tf.sin(angle) / zoom, tf.cos(angle) / zoom
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy,
                          b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
