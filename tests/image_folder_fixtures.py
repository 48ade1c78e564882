"""Tiny image folders written by the tests (PNG files of seeded random pixels)."""

import numpy as np
from PIL import Image


def write_class_folders(root, per_class, size=(8, 8), channels=3, classes=("cat", "dog", "fox"),
                        seed=0):
    """`root/<class>/<i>.png` for each class; returns {class: [paths]}.

    Args:
        root: a `pathlib.Path` (created).
        per_class: images per class.
        size: (height, width) of every image.
        channels: 1 (grey) or 3 (RGB).
        classes: class folder names.
        seed: seeds the pixels.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            # Class-dependent brightness, so there is something to learn.
            pixels = rng.integers(0, 128, (*size, channels)) + 40 * label
            image = Image.fromarray(pixels.astype("uint8").squeeze(-1) if channels == 1
                                    else pixels.astype("uint8"))
            path = folder / f"{i:03d}.png"
            image.save(path)
            written[name].append(path)
    return written


def write_corrupt_png(path):
    """A file named .png that holds no image; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a PNG file")
    return path
