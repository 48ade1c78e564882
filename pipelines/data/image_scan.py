"""One cheap pass over an image folder's files before anything trains.

`scan_images` reads every file once and checks it is an image TensorFlow will
decode, without decoding pixels where it can:

* PNG: Pillow reads the header (size, colour type) and `verify()` walks every
  chunk up to IEND checking its CRC, so a cut or corrupted file fails; cost:
  one read of the file plus a CRC32 (GB/s), no inflate.
* JPEG: Pillow reads the header up to the start of scan; the file must then
  hold an end-of-image marker after the scan data (TF's decoder rejects a file
  cut anywhere before it); cost: one read of the file and a byte search from its
  end. Damage inside intact entropy-coded data is not detected (that needs a
  full decode, about one uncached epoch of decoding).
* anything else with an image name (GIF, BMP or WebP content): rare, decoded
  once with `tf.io.decode_image` -- exactly what training would do.

Bad files are then either an error naming them or skipped with one warning
(`apply_bad_image_policy`), and `describe_conversions` words, in one line, the
resizes and channel conversions decoding to one (H, W, C) implies.

Example:
    >>> from pipelines.data.image_scan import scan_images
    >>> headers, bad = scan_images(["a/1.png", "a/2.jpg", "b/bad.png"])
    >>> bad
    [('b/bad.png', 'not an image file (no PNG/JPEG/GIF/BMP/WebP header)')]
"""

import collections
import concurrent.futures
import dataclasses
import io
import logging
import os
import struct

from PIL import Image

log = logging.getLogger("pipelines.data")

#: Folders with at least this many files show a progress bar while scanned.
PROGRESS_MIN_FILES = 2000
#: A ValueError names this many bad files, then gives the count of the others.
MAX_NAMED_IN_ERROR = 5
#: The skip warning names this many skipped files, then gives the count.
MAX_NAMED_IN_WARNING = 20
#: What a decoded image with this many channels is called in messages.
CHANNEL_NAMES = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}

# Pillow modes -> channels `tf.io.decode_image(channels=0)` yields (palette
# images: 3, or 4 with a transparency entry; CMYK/YCbCr JPEGs come out RGB).
_GREY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GREY_ALPHA_MODES = frozenset({"LA", "La"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA"})
# What Pillow raises for a broken file (its PNG reader raises SyntaxError).
_BROKEN_FILE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                       Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """Size and channels of one image file, as `tf.io.decode_image` will see it."""

    path: str
    height: int
    width: int
    channels: int


class BadImageError(Exception):
    """A file that is not a decodable image; the message says why."""


def read_header(path):
    """Checks one file and returns its `ImageHeader`.

    Args:
        path: image file path.

    Returns:
        `ImageHeader`.

    Raises:
        BadImageError: the file is empty, not an image, truncated or corrupt.

    Example:
        >>> read_header("cat/1.png")
        ImageHeader(path='cat/1.png', height=12, width=10, channels=3)
    """
    with open(path, "rb") as file:
        data = file.read()
    if not data:
        raise BadImageError("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except _BROKEN_FILE_ERRORS as err:
        raise BadImageError("not an image file (no PNG/JPEG/GIF/BMP/WebP header)") from err
    if image.format == "PNG":
        _verify_png(image)
    elif image.format == "JPEG":
        _verify_jpeg(data)
    else:
        return _decode_with_tensorflow(path, data, image.format)
    width, height = image.size
    return ImageHeader(path, height, width, _decoded_channels(image))


def _decoded_channels(image):
    mode = image.mode
    if mode in _GREY_MODES:
        return 1
    if mode in _GREY_ALPHA_MODES:
        return 2
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return 4
    return 3


def _verify_png(image):
    try:
        image.verify()  # Chunk walk + CRCs up to IEND; no pixel decoding.
    except _BROKEN_FILE_ERRORS as err:
        raise BadImageError(f"truncated or corrupt PNG ({err})") from err


def _verify_jpeg(data):
    scan_start = _jpeg_scan_start(data)
    # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed as 0xFF00),
    # so an end-of-image marker after the first scan means the data is complete.
    if scan_start is None or data.rfind(b"\xff\xd9") < scan_start:
        raise BadImageError("truncated JPEG (no end-of-image marker after the image data)")


def _jpeg_scan_start(data):
    """Offset where the first scan's data starts, walking the marker segments.

    Walking by segment lengths skips embedded thumbnails (inside APP1), whose own
    end-of-image marker must not pass for the main image's.
    """
    position = 2  # After the start-of-image marker.
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # Fill byte.
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # Markers without a length.
            position += 2
        else:
            end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
            if marker == 0xDA:  # Start of scan.
                return end
            position = end
    return None


def _decode_with_tensorflow(path, data, image_format):
    import tensorflow as tf

    try:
        shape = tf.io.decode_image(data, expand_animations=False).shape
    except tf.errors.InvalidArgumentError as err:
        message = err.message.splitlines()[0] if err.message else type(err).__name__
        raise BadImageError(f"cannot decode {image_format} data ({message})") from err
    return ImageHeader(path, int(shape[0]), int(shape[1]), int(shape[2]))


def _check(path):
    try:
        return read_header(path), None
    except BadImageError as err:
        return None, str(err)
    except OSError as err:  # Unreadable file (permissions, vanished...).
        return None, f"cannot read file ({err.strerror or err})"


def scan_images(paths, *, progress_min_files=PROGRESS_MIN_FILES):
    """Checks every file once, in threads (the work is mostly file I/O).

    Args:
        paths: image file paths.
        progress_min_files: show a tqdm progress bar (on stderr) from this many files.

    Returns:
        (headers, bad): `ImageHeader`s of the good files, in `paths` order, and
        (path, reason) pairs for the others.

    Example:
        >>> headers, bad = scan_images(paths)
    """
    workers = min(8, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check, paths)
        if len(paths) >= progress_min_files:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="checking images", unit="file")
        results = list(results)
    headers = [header for header, _ in results if header is not None]
    bad = [(path, reason) for path, (_, reason) in zip(paths, results) if reason is not None]
    return headers, bad


def _name_files(bad, root, limit):
    named = [f"{os.path.relpath(path, root)} ({reason})" for path, reason in bad[:limit]]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return "; ".join(named) + more


def apply_bad_image_policy(bad, policy, root, total):
    """Raises for bad files ("error") or warns once and returns them ("skip").

    Args:
        bad: (path, reason) pairs from `scan_images`.
        policy: "error" or "skip" (see `BAD_IMAGE_POLICIES`).
        root: the image folder (paths are named relative to it).
        total: number of files scanned.

    Returns:
        The skipped paths, a tuple (empty when nothing is bad).

    Raises:
        ValueError: policy "error" and some file is bad; names up to
            MAX_NAMED_IN_ERROR files, then counts the rest.

    Example:
        >>> apply_bad_image_policy([("/d/cat/bad.png", "empty file")], "skip", "/d", 30)
        ('/d/cat/bad.png',)
    """
    if not bad:
        return ()
    if policy == "error":
        raise ValueError(
            f"image folder {root!r}: {len(bad)} of {total} image files cannot be decoded: "
            f"{_name_files(bad, root, MAX_NAMED_IN_ERROR)}; fix or remove them, or pass "
            "on_bad_image='skip' (--on-bad-image skip) to leave them out"
        )
    log.warning("image folder %r: skipping %d of %d image files that cannot be decoded: %s",
                root, len(bad), total, _name_files(bad, root, MAX_NAMED_IN_WARNING))
    return tuple(path for path, _ in bad)


def choose_image_shape(headers, image_size):
    """(H, W, C) every image is decoded to.

    Size: `image_size`, else the most common size (ties: the first file's).
    Channels: 3 if any image has colour, else 1 -- grey converts to RGB without
    loss, the other way would throw colour away. Alpha is always dropped.

    Example:
        >>> choose_image_shape([ImageHeader("a", 8, 8, 1), ImageHeader("b", 8, 8, 4)], None)
        (8, 8, 3)
    """
    if image_size is None:
        sizes = collections.Counter((h.height, h.width) for h in headers)
        image_size = sizes.most_common(1)[0][0]
    channels = 3 if any(h.channels >= 3 for h in headers) else 1
    return int(image_size[0]), int(image_size[1]), channels


def describe_conversions(name, headers, image_shape):
    """One line saying which images decoding to `image_shape` resizes or converts.

    Args:
        name: dataset name for the message.
        headers: `ImageHeader`s of all images used.
        image_shape: the (H, W, C) they are decoded to.

    Returns:
        The line, or "" when every image already has that shape.

    Example:
        >>> describe_conversions("pets", headers, (12, 10, 3))
        'pets: 3 of 30 images converted to 12x10 RGB: 2 resized (from 24x20: 2); 1 grey->RGB'
    """
    height, width, channels = image_shape
    target = CHANNEL_NAMES[channels]
    resized = collections.Counter(
        f"{h.height}x{h.width}" for h in headers if (h.height, h.width) != (height, width))
    converted = collections.Counter(
        f"{CHANNEL_NAMES[h.channels]}->{target}" for h in headers if h.channels != channels)
    changed = sum((h.height, h.width, h.channels) != image_shape for h in headers)
    if not changed:
        return ""
    parts = []
    if resized:
        sizes = ", ".join(f"{size}: {n}" for size, n in resized.most_common(5))
        more = ", ..." if len(resized) > 5 else ""
        parts.append(f"{sum(resized.values())} resized (from {sizes}{more})")
    parts += [f"{n} {what}" for what, n in sorted(converted.items())]
    return (f"{name}: {changed} of {len(headers)} images converted to {height}x{width} "
            f"{target}: " + "; ".join(parts))
