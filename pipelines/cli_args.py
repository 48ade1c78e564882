"""Small parsers shared by the job command lines (`train`, `tune`)."""

import argparse
import os


def safe_name(text):
    """A dataset name or path as a folder / model-name fragment: `"folder:/a/b c"` -> `"b_c"`."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.basename(
        str(text).rstrip("/"))).strip("_") or "dataset"


def image_size(text):
    """`--image-size` value: `HEIGHT,WIDTH`, `HEIGHTxWIDTH` or `SIZE` -> `(height, width)`."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH or SIZE; received {text!r}")
    return tuple(parts)
