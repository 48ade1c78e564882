"""Validation of `load_datasets` arguments and of the source name, before any I/O.

Example:
    >>> from pipelines.data.arguments import parse_source
    >>> parse_source("digits")
    ('tfds', 'uci_digits')
    >>> parse_source("folder:/data/pets")
    ('folder', '/data/pets')
"""

import difflib
import os

import numpy as np

from pipelines.data.digits import BUILDER_NAME as DIGITS_BUILDER
from pipelines.data.options import (
    AUGMENTATIONS,
    BAD_IMAGE_POLICIES,
    DIGITS_SOURCE,
    FOLDER_PREFIX,
)


def is_int(value):
    """True for Python/numpy integers, False for bools (batch_size=True is a bug).

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(name, value):
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive integer")


def check_arguments(*, batch_size, image_size, validation_fraction, augmentation, seed,
                    shuffle_buffer, cache, on_bad_image):
    """Validates the plain arguments of `load_datasets`.

    Args:
        batch_size, image_size, validation_fraction, augmentation, seed,
        shuffle_buffer, cache, on_bad_image: as passed to `load_datasets`.

    Returns:
        image_size as an (height, width) tuple, or None.

    Raises:
        ValueError: naming the first bad value and what was expected.

    Example:
        >>> check_arguments(batch_size=8, image_size=16, validation_fraction=0.2,
        ...                 augmentation=None, seed=0, shuffle_buffer=100, cache=True,
        ...                 on_bad_image="skip")
        (16, 16)
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("shuffle_buffer", shuffle_buffer)
    if not is_int(seed):
        raise ValueError(f"seed={seed!r}: expected an integer")
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float, np.floating, np.integer))
        or not 0.0 < float(validation_fraction) < 1.0
    ):
        raise ValueError(
            f"validation_fraction={validation_fraction!r}: expected a number strictly "
            "between 0 and 1"
        )
    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"augmentation={augmentation!r}: expected None or one of {list(AUGMENTATIONS)}"
        )
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(
            f"on_bad_image={on_bad_image!r}: expected one of {list(BAD_IMAGE_POLICIES)}"
        )
    if not isinstance(cache, (bool, str)):
        raise ValueError(f"cache={cache!r}: expected True, False or a file path prefix")
    return check_image_size(image_size)


def check_image_size(image_size):
    """None, an int, or (height, width) positive ints -> None or an (h, w) tuple.

    Example:
        >>> check_image_size(8), check_image_size((6, 4)), check_image_size(None)
        ((8, 8), (6, 4), None)
    """
    if image_size is None:
        return None
    if is_int(image_size):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        height = width = None
    if not (is_int(height) and is_int(width) and height > 0 and width > 0):
        raise ValueError(
            f"image_size={image_size!r}: expected None or (height, width) positive integers"
        )
    return int(height), int(width)


def parse_source(source):
    """Returns ("folder", path) or ("tfds", builder name with optional config/version).

    An unknown tfds name fails here, before anything touches disk or network.

    Example:
        >>> parse_source("mnist:3.0.1")
        ('tfds', 'mnist:3.0.1')
    """
    import tensorflow_datasets as tfds

    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"source={source!r}: expected 'digits', a tfds dataset name or an image folder"
        )
    text = os.fspath(source)
    if text.startswith(FOLDER_PREFIX):
        return "folder", text[len(FOLDER_PREFIX):]
    if os.path.isdir(text):
        return "folder", text
    if text == DIGITS_SOURCE or text.startswith(DIGITS_SOURCE + ":"):
        return "tfds", DIGITS_BUILDER + text[len(DIGITS_SOURCE):]
    # "name", "name:1.0.0", "name/config", "name/config:1.0.0": check the name.
    name = text.split(":", 1)[0].split("/", 1)[0]
    known = tfds.list_builders(with_community_datasets=False)
    if name not in known:
        close = difflib.get_close_matches(name, [DIGITS_SOURCE] + known, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown data source {text!r}{hint}: expected 'digits', a tensorflow-datasets "
            "name such as 'mnist' or 'cifar10' (optionally 'name:version'), or an existing "
            "image folder with one sub-folder per class"
        )
    return "tfds", text
