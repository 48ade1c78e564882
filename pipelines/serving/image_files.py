"""Image files on the client side: recognising, reading, decoding, and what changes.

Decoding always goes through `pipelines.data.images.decode_image`, the same ops as
the training pipeline and the `serving_bytes` graph.

Example:
    >>> files = read_images(["cat.jpg"])
    >>> conversion_note(native_image_shapes(files), (32, 32, 3))
    'resizing 1 of 1 image to 32x32 (from 480x640)'
"""

import collections
import pathlib

import numpy as np

from pipelines.serving.errors import PredictError

# Leading bytes of the formats tf.io.decode_image reads (WebP: RIFF....WEBP).
_MAGIC = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}
_CHANNEL_NAMES = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}


def image_format(data):
    """The format name of encoded image bytes ("JPEG", "PNG", ...), or None.

    Example:
        >>> image_format(b"\\x89PNG\\r\\n\\x1a\\n...")
        'PNG'
    """
    for name, prefixes in _MAGIC.items():
        if data.startswith(prefixes):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_images(paths):
    """Read image files as raw bytes (no decoding: the server does that).

    A file that is not an image at all is refused here, naming it; the server could
    only say that some image of the batch is bad. Truncated or corrupt images still
    get the server's INVALID_ARGUMENT.

    Example:
        >>> read_images(["cat.jpg"])[0][:3]
        b'\\xff\\xd8\\xff'
    """
    images = []
    for path in paths:
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as error:  # missing, a folder, unreadable: name the file and why
            raise PredictError(f"{path}: cannot read it as an image file "
                               f"({error.strerror or error})") from None
        if image_format(data) is None:
            raise PredictError(f"{path} is not a JPEG, PNG, GIF, BMP or WebP file")
        images.append(data)
    return images


def decode_for_float_signature(images_bytes, image_shape):
    """Decode and resize files for `serving_default`: float32 `[N, H, W, C]`.

    Example:
        >>> decode_for_float_signature(read_images(["cat.jpg"]), (32, 32, 3)).shape
        (1, 32, 32, 3)
    """
    import tensorflow as tf

    from pipelines.data.images import decode_image
    from pipelines.serving_checks import short_error

    try:
        decoded = [
            decode_image(tf.constant(data), tuple(image_shape)).numpy() for data in images_bytes
        ]
    except tf.errors.InvalidArgumentError as error:
        raise PredictError(f"cannot decode an image: {short_error(error.message)}") from None
    if not decoded:
        return np.zeros((0, *image_shape), np.float32)
    return np.stack(decoded).astype(np.float32)


def native_image_shapes(images_bytes):
    """`(H, W, C)` of each file as stored, or None for a file that does not decode.

    Undecodable files are left to the signature, which names the problem.

    Example:
        >>> native_image_shapes(read_images(["grey.png"]))
        [(28, 28, 1)]
    """
    import tensorflow as tf

    shapes = []
    for data in images_bytes:
        try:
            image = tf.io.decode_image(data, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            shapes.append(None)
        else:
            shapes.append(tuple(int(d) for d in image.shape))
    return shapes


def _tally(counter):
    """`"30x20"` for one value, `"30x20 [2], 8x8 [1]"` for several."""
    if len(counter) == 1:
        return str(next(iter(counter)))
    return ", ".join(f"{value} [{count}]" for value, count in counter.most_common())


def _plural(count):
    return "image" if count == 1 else "images"


def conversion_note(shapes, image_shape):
    """One line saying how many images get resized / change channels, or None.

    Args:
        shapes: `native_image_shapes` of the files (None entries are skipped).
        image_shape: the model's `(H, W, C)`.

    Example:
        >>> print(conversion_note([(30, 20, 3), (16, 16, 1), (16, 16, 3)], (16, 16, 3)))
        resizing 1 of 3 images to 16x16 (from 30x20); converting 1 of 3 images from 1 to \
3 channels (grey to RGB)
    """
    height, width, channels = (int(d) for d in image_shape)
    known = [shape for shape in shapes if shape is not None]
    total = len(shapes)
    sizes = collections.Counter(f"{h}x{w}" for h, w, _ in known if (h, w) != (height, width))
    sources = collections.Counter(c for _, _, c in known if c != channels)
    parts = []
    if sizes:
        count = sum(sizes.values())
        parts.append(
            f"resizing {count} of {total} {_plural(total)} to {height}x{width} "
            f"(from {_tally(sizes)})"
        )
    if sources:
        count = sum(sources.values())
        names = [_CHANNEL_NAMES.get(c, "?") for c in sources]
        parts.append(
            f"converting {count} of {total} {_plural(total)} from {_tally(sources)} to "
            f"{channels} channels ({'/'.join(names)} to {_CHANNEL_NAMES.get(channels, '?')})"
        )
    return "; ".join(parts) or None
