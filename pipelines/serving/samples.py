"""Pixel images used for warm-up records and verification, and their PNG files.

Example:
    >>> images = make_sample_images((8, 8, 3), count=2)
    >>> len(encode_png(images))
    2
"""

import numpy as np


def as_pixel_images(images, image_shape):
    """Return `images` as float32 `[N, H, W, C]` integer pixel values in [0, 255].

    Sample and warm-up images are rounded to uint8 values so that their PNG encoding
    is lossless and both signatures see exactly the same pixels.

    Args:
        images: `[N, H, W, C]` or one `[H, W, C]` image, any numeric dtype.
        image_shape: the model's `(H, W, C)`.

    Example:
        >>> as_pixel_images(np.full((2, 8, 8, 3), 12.4), (8, 8, 3))[0, 0, 0]
        array([12., 12., 12.], dtype=float32)
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"Expected images of shape [N, {', '.join(map(str, image_shape))}], "
            f"got {images.shape}"
        )
    return np.clip(np.rint(images.astype(np.float64)), 0, 255).astype(np.float32)


def make_sample_images(image_shape, count=4, seed=0):
    """Deterministic random pixel images (float32, integer values in [0, 255]).

    Example:
        >>> make_sample_images((4, 4, 1), count=3).shape
        (3, 4, 4, 1)
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *image_shape)).astype(np.float32)


def encode_png(images):
    """Encode `[N, H, W, C]` pixel images as a list of PNG `bytes`.

    Example:
        >>> encode_png(np.zeros((1, 4, 4, 3)))[0][:4]
        b'\\x89PNG'
    """
    import tensorflow as tf

    pixels = np.clip(np.rint(np.asarray(images)), 0, 255).astype(np.uint8)
    return [tf.io.encode_png(image).numpy() for image in pixels]
