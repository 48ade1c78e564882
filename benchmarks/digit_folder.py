"""A developer benchmark image folder written from the digits scikit-learn ships (no download).

The 1,797 UCI digits (8x8, 17 grey levels, `pipelines.data.digits`) are
upscaled to a 20x20 box inside a 28x28 canvas (MNIST's geometry) and, to make
them look like scans rather than one centred template per image, each source
image is drawn several times with a seeded random rotation (+-12 degrees),
scale (0.85-1.15), shear, shift (+-2 pixels), stroke contrast (gamma) and
sensor noise. The colour variant (`colour=True`, 32x32 RGB) also draws a
random background and a contrasting ink colour per image.

Splits follow the fixed digits splits (`pipelines.data.digits.split_indices`:
1,149 / 288 / 360 source images): every drawing of one source image lands in
the same split, so no test digit is a re-drawing of a training digit. With
the default draws per split (train 4, validation 2, test 3) the folder holds
4,596 / 576 / 1,080 PNG files in ``ROOT/{train,validation,test}/{0..9}/``.

Everything is drawn from `numpy.random.default_rng(seed)` in a fixed order
and written by Pillow: the same arguments write byte-identical files.

Example:
    python -m benchmarks.digit_folder /tmp/digit_scans            # 28x28 grey
    python -m benchmarks.digit_folder /tmp/digit_scans_rgb --colour
"""

import argparse
import os

import numpy as np
from PIL import Image

#: Drawings per source image, per split (train / validation / test).
DEFAULT_DRAWS = {"train": 4, "validation": 2, "test": 3}
#: The digit's box inside the canvas: MNIST puts a 20x20 digit in 28x28.
BOX_SHARE = 20 / 28
MAX_DEGREES = 12.0
SCALE_RANGE = (0.85, 1.15)
MAX_SHEAR = 0.15
MAX_SHIFT_SHARE = 2 / 28  # of the canvas side
NOISE_SIGMA = 8.0  # grey levels


def _affine_coefficients(size, rng):
    """Pillow's inverse affine map (output -> input) for a random warp about the centre."""
    angle = np.deg2rad(rng.uniform(-MAX_DEGREES, MAX_DEGREES))
    scale = rng.uniform(*SCALE_RANGE)
    shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
    shift = rng.uniform(-MAX_SHIFT_SHARE, MAX_SHIFT_SHARE, 2) * size
    cos, sin = np.cos(angle), np.sin(angle)
    forward = scale * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array([size / 2.0, size / 2.0])
    # input = inverse @ (output - centre - shift) + centre
    offset = centre - inverse @ (centre + shift)
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def draw_digit(counts, rng, size=28, colour=False):
    """One randomly warped, noisy drawing of an 8x8 digit on a `size` x `size` canvas.

    Args:
        counts: (8, 8) array of the digit's block counts in 0..16.
        rng: `numpy.random.Generator`, advanced by a fixed number of draws.
        size: canvas side in pixels.
        colour: RGB with random background and ink colours; else grey ink on black.

    Returns:
        uint8 array (size, size) or (size, size, 3).

    Example:
        >>> draw_digit(np.full((8, 8), 16), np.random.default_rng(0)).shape
        (28, 28)
    """
    box = int(round(size * BOX_SHARE))
    digit = Image.fromarray(np.round(np.asarray(counts) * 255.0 / 16.0).astype(np.uint8))
    canvas = Image.new("L", (size, size))
    canvas.paste(digit.resize((box, box), Image.BICUBIC),
                 ((size - box) // 2, (size - box) // 2))
    warped = canvas.transform((size, size), Image.AFFINE, _affine_coefficients(size, rng),
                              resample=Image.BILINEAR)
    ink = (np.asarray(warped, np.float64) / 255.0) ** rng.uniform(0.6, 1.4)
    if colour:
        background = rng.uniform(0, 255, 3)
        # The ink is the background's opposite, shifted a little: always contrasting.
        ink_colour = np.clip(255.0 - background + rng.normal(0, 30, 3), 0, 255)
        pixels = background * (1 - ink[..., None]) + ink_colour * ink[..., None]
        pixels = pixels + rng.normal(0, NOISE_SIGMA, pixels.shape)
    else:
        pixels = 255.0 * ink + rng.normal(0, NOISE_SIGMA, ink.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def write_digit_folder(root, *, draws=None, size=None, colour=False, seed=0, limit=None):
    """Writes the benchmark folder; returns {split: number of images written}.

    Args:
        root: folder to create (must not hold a ``train/`` already).
        draws: {split: drawings per source image}; default `DEFAULT_DRAWS`.
        size: canvas side; default 28 (grey) or 32 (colour).
        colour: RGB images (see `draw_digit`).
        seed: seeds every drawing.
        limit: at most this many source images per class and split (a quick, small
            folder that still has every class in every split).

    Returns:
        dict split -> images written.

    Raises:
        ValueError: `root` already holds a split folder, or a bad `draws`.

    Example:
        >>> write_digit_folder("/tmp/scans", draws={"train": 1, "validation": 1, "test": 1},
        ...                    limit=5)
        {'train': 50, 'validation': 50, 'test': 50}
    """
    from sklearn.datasets import load_digits

    from pipelines.data.digits import split_indices

    draws = dict(DEFAULT_DRAWS if draws is None else draws)
    if set(draws) != set(DEFAULT_DRAWS) or any(
            not isinstance(n, int) or n < 1 for n in draws.values()):
        raise ValueError(f"draws={draws!r}: expected a positive integer for each of "
                         f"{sorted(DEFAULT_DRAWS)}")
    if os.path.exists(os.path.join(root, "train")):
        raise ValueError(f"{root!r} already holds a train/ folder: expected a new folder")
    size = size or (32 if colour else 28)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    written = {}
    for split, indices in split_indices().items():
        if limit:  # the first `limit` of each class, in the split's order
            indices = [i for label in range(10)
                       for i in [j for j in indices if digits.target[j] == label][:limit]]
        for label in range(10):
            os.makedirs(os.path.join(root, split, str(label)), exist_ok=True)
        for index in indices:
            label = int(digits.target[index])
            for draw in range(draws[split]):
                pixels = draw_digit(digits.images[index], rng, size, colour)
                Image.fromarray(pixels).save(
                    os.path.join(root, split, str(label), f"{index:04d}_{draw}.png"))
        written[split] = len(indices) * draws[split]
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.digit_folder",
        description="Write the digit-scans benchmark folder (train/validation/test PNGs).")
    parser.add_argument("root", help="folder to create")
    parser.add_argument("--colour", action="store_true", help="32x32 RGB instead of 28x28 grey")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_digit_folder(args.root, colour=args.colour, seed=args.seed))


if __name__ == "__main__":
    main()
