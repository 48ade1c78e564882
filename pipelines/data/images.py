"""The one image-decoding path of keras-vit: training input, serving and clients.

Every place that turns encoded image files into model input calls `decode_image`
(or `decode_image_batch`): the folder input pipeline (`pipelines.data`), the
exported `serving_bytes` signature and the local predict client. A second copy
of these few ops would be a silent train/serve skew, so there is none.

Conventions: float32 pixels in raw [0, 255] scale, shape `(H, W, C)`; grey and
colour are converted to the requested channel count by `tf.io.decode_image`;
images of another size are resized by `resize_pixels`.

Example:
    >>> import tensorflow as tf
    >>> from pipelines.data.images import decode_image
    >>> decode_image(tf.io.read_file("cat.jpg"), (32, 32, 3)).shape
    TensorShape([32, 32, 3])
"""

import tensorflow as tf


def resize_pixels(image, size):
    """Resize `[H, W, C]` (or batched) pixels to `size`, staying in [0, 255].

    Antialiased in every case, by the cheapest op that is:

    - shrinking (no side grows): `area`, the mean of the source pixels each
      output pixel covers, a box filter (OpenCV's INTER_AREA);
    - enlarging (no side shrinks): `bilinear`; antialiasing only widens a
      kernel that shrinks, so this equals bilinear with `antialias=True`
      (tests/test_data_folders.py checks it), at ~1/5 of the time;
    - one side shrinks, the other grows: bilinear with `antialias=True`.

    The antialiased bilinear kernel (`ScaleAndTranslate`) cost more than the
    PNG decode itself: a folder of 40x40 PNGs resized to 32x32 went from
    ~9,400 to ~15,000 images/s (benchmarks/README.md, `input`). Works on
    dynamic shapes (the choice is a `tf.case` on them). The values are
    clipped against rounding so the [0, 255] contract holds.

    Args:
        image: tensor of pixels, any numeric dtype.
        size: `(height, width)`.

    Returns:
        float32 tensor of the new size.

    Example:
        >>> resize_pixels(tf.zeros((4, 4, 1), tf.uint8), (8, 8)).shape
        TensorShape([8, 8, 1])
    """
    image = tf.cast(image, tf.float32)
    height, width = int(size[0]), int(size[1])
    source = tf.shape(image)[-3:-1]
    shrinks = tf.reduce_all(tf.greater_equal(source, [height, width]))
    grows = tf.reduce_all(tf.less_equal(source, [height, width]))
    # Explicit tf.case: ExportArchive traces endpoints with autograph off.
    resized = tf.case(
        [(shrinks, lambda: tf.image.resize(image, (height, width), method="area")),
         (grows, lambda: tf.image.resize(image, (height, width), method="bilinear"))],
        default=lambda: tf.image.resize(image, (height, width), method="bilinear",
                                        antialias=True))
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_pixels(image_bytes, channels):
    """uint8 `[h, w, channels]` pixels of one encoded image at its own size (GIF: first frame).

    The one decode call behind `decode_image` and `decode_same_size_files`.
    TensorFlow's GIF, BMP and WebP decoders cannot convert to one channel, so
    for `channels=1` those are decoded as RGB and converted to grey
    (`tf.image.rgb_to_grayscale`); JPEG and PNG convert in their decoders.

    Example:
        >>> decode_pixels(tf.io.read_file("cat.png"), 3).dtype
        tf.uint8
    """
    def decode(channels):
        return tf.io.decode_image(image_bytes, channels=channels, dtype=tf.uint8,
                                  expand_animations=False)

    if channels != 1:
        return decode(channels)
    def starts(offset, magic):
        return tf.equal(tf.strings.substr(image_bytes, offset, len(magic)), magic)

    webp = tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))
    rgb_only = tf.reduce_any(tf.stack([starts(0, b"GIF"), starts(0, b"BM"), webp]))
    # Explicit tf.cond: ExportArchive traces endpoints with autograph off.
    return tf.cond(rgb_only, lambda: tf.image.rgb_to_grayscale(decode(3)), lambda: decode(1))


def decode_image(image_bytes, image_shape):
    """Decode one encoded image into float32 `[H, W, C]` pixels.

    Works in a graph (tf.data map functions, the `serving_bytes` signature) and
    eagerly (clients). A non-image or truncated file raises `InvalidArgumentError`
    from `DecodeImage`.

    Args:
        image_bytes: scalar tf.string, a JPEG, PNG, GIF (first frame) or BMP file.
        image_shape: `(H, W, C)`: decoded to C channels (grey <-> RGB converted),
            resized with `resize_pixels` when the file is not H x W.

    Returns:
        float32 tensor of shape `image_shape`, values in [0, 255].

    Example:
        >>> decode_image(tf.io.read_file("cat.jpg"), (32, 32, 3)).shape
        TensorShape([32, 32, 3])
    """
    height, width, channels = image_shape
    image = decode_pixels(image_bytes, channels)
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    # Explicit tf.cond: ExportArchive traces endpoints with autograph off.
    image = tf.cond(
        same_size,
        lambda: tf.cast(image, tf.float32),
        lambda: resize_pixels(image, (height, width)),
    )
    return tf.ensure_shape(image, (height, width, channels))


def decode_image_batch(images_bytes, image_shape, *, read=None):
    """Decode a `[batch]` tf.string tensor into float32 `[batch, H, W, C]`.

    An empty batch gives `[0, H, W, C]`: `tf.map_fn` with a `fn_output_signature`
    handles it, and the reshape restores the static image dims that the stacked
    empty TensorList loses at run time.

    Args:
        images_bytes: 1-D tf.string tensor of encoded images (of file paths with `read`).
        image_shape: `(H, W, C)`.
        read: None, or applied to each element first (`tf.io.read_file` for paths).

    Example:
        >>> decode_image_batch(tf.constant([png_bytes]), (8, 8, 1)).shape
        TensorShape([1, 8, 8, 1])
    """
    image_shape = tuple(image_shape)
    images = tf.map_fn(
        lambda data: decode_image(data if read is None else read(data), image_shape),
        images_bytes,
        fn_output_signature=tf.TensorSpec(image_shape, tf.float32),
    )
    batch = tf.shape(images_bytes)[0]
    return tf.reshape(images, tf.concat([[batch], list(image_shape)], axis=0))


def decode_same_size_files(paths, source_size, image_shape):
    """Read and decode a `[batch]` of image files that all are `source_size`; resize at once.

    The folder pipeline's fast path when every file has one size (the image
    scan knows): per file only the read and the decode, then one
    `resize_pixels` over the whole batch, the same op `decode_image` applies
    to each image, so the pixels are the same as decoding file by file (and
    as the `serving_bytes` signature's). Per-file tf.data work was what
    limited a folder of small PNGs to about the training step's rate.

    Args:
        paths: 1-D tf.string tensor of file paths.
        source_size: `(height, width)` of every file.
        image_shape: `(H, W, C)` to decode to.

    Returns:
        float32 tensor `[batch, H, W, C]` in [0, 255].

    Example:
        >>> decode_same_size_files(tf.constant(["a.png", "b.png"]), (40, 40), (32, 32, 3)).shape
        TensorShape([2, 32, 32, 3])
    """
    height, width, channels = (int(d) for d in image_shape)
    source = (int(source_size[0]), int(source_size[1]), channels)

    def read(path):
        return tf.ensure_shape(decode_pixels(tf.io.read_file(path), channels), source)

    images = tf.map_fn(read, paths, fn_output_signature=tf.TensorSpec(source, tf.uint8))
    if source[:2] == (height, width):
        return tf.cast(images, tf.float32)
    return tf.ensure_shape(resize_pixels(images, (height, width)),
                           (None, height, width, channels))
