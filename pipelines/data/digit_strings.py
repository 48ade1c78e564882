"""Strings of 1-5 handwritten digits as a TensorFlow Datasets builder (no network needed).

Each example places 1-5 of the embedded UCI digit images (8x8, see
`pipelines.digits_dataset`) side by side on a fixed 16x64 canvas, left to
right, with random gaps between them, a random left margin and a random
vertical position per digit; its label is the digit string, e.g. ``"4071"``.
The train / validation / test strings draw their digit images only from the
corresponding fixed `uci_digits` split (`split_indices()`), so test strings
are made of digit images never seen in training. Generation is seeded: the
same version and config always give the same examples.

Importing this module registers the builder as ``digit_strings`` with the
configs ``default`` (20000 / 2000 / 2000 strings) and ``small`` (2000 / 500 /
500, for tests and smoke runs).

Example:
    >>> import tensorflow_datasets as tfds
    >>> import pipelines.data.digit_strings  # registers "digit_strings"
    >>> builder = tfds.builder("digit_strings/small", data_dir="/tmp/tfds")
    >>> builder.download_and_prepare()  # reads scikit-learn, writes TFRecords
    >>> ds = builder.as_dataset(split="test", as_supervised=True)  # (image, b"4071")
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from pipelines.digits_dataset import split_indices, to_pixel_scale

#: Name under which tfds registers `DigitStrings`.
BUILDER_NAME = "digit_strings"
#: (height, width, channels) of every image.
CANVAS_SHAPE = (16, 64, 1)
DIGIT_SIZE = 8
MIN_DIGITS, MAX_DIGITS = 1, 5
#: Blank columns between neighbouring digits: uniform in [0, MAX_GAP].
MAX_GAP = 3
#: Each digit's top row is the string's baseline plus a jitter in [-JITTER, JITTER].
JITTER = 2
SEED = 0
SPLITS = ("train", "validation", "test")

_DESCRIPTION = f"""\
Images of {MIN_DIGITS}-{MAX_DIGITS} UCI handwritten digits (8x8, from scikit-learn's
`load_digits`, pixels 0..255) placed left to right on a {CANVAS_SHAPE[0]}x{CANVAS_SHAPE[1]}
canvas with random gaps (0-{MAX_GAP} px), margin and vertical jitter (+-{JITTER} px around
a random baseline); label: the digit string. Each split uses only the digit images of
the same split of `uci_digits`. Also stored: `digit_indices` (indices into
`load_digits()`) and `boxes` (top-left `(row, col)` of each digit).
"""


def sample_layout(rng, num_digits, canvas_shape=CANVAS_SHAPE):
    """Random top-left `(row, col)` of `num_digits` digits, left to right, not overlapping.

    Args:
        rng: `numpy.random.Generator`.
        num_digits: int in [MIN_DIGITS, MAX_DIGITS].
        canvas_shape: (height, width, channels).

    Returns:
        int32 array `(num_digits, 2)`.

    Example:
        >>> sample_layout(np.random.default_rng(0), 3).shape
        (3, 2)
    """
    height, width = canvas_shape[:2]
    gaps = rng.integers(0, MAX_GAP + 1, num_digits - 1)
    span = num_digits * DIGIT_SIZE + int(gaps.sum())
    if span > width:
        raise ValueError(f"{num_digits} digits with gaps need {span} columns; the canvas "
                         f"has {width}")
    left = rng.integers(0, width - span + 1)
    cols = left + np.concatenate([[0], np.cumsum(gaps + DIGIT_SIZE)])
    lowest = height - DIGIT_SIZE
    baseline = rng.integers(JITTER, lowest - JITTER + 1) if lowest >= 2 * JITTER else 0
    rows = np.clip(baseline + rng.integers(-JITTER, JITTER + 1, num_digits), 0, lowest)
    return np.stack([rows, cols], axis=1).astype("int32")


def render(digit_images, boxes, canvas_shape=CANVAS_SHAPE):
    """Pastes uint8 `(n, 8, 8)` digit images at `boxes` `(n, 2)` on a black canvas.

    Returns:
        uint8 array `canvas_shape`.
    """
    canvas = np.zeros(canvas_shape[:2], np.uint8)
    for image, (row, col) in zip(digit_images, boxes):
        window = canvas[row:row + DIGIT_SIZE, col:col + DIGIT_SIZE]
        np.maximum(window, image, out=window)
    return canvas.reshape(canvas_shape)


def generate_strings(split, count, images=None, labels=None):
    """The `count` examples of `split`, as dicts of numpy values (deterministic).

    Args:
        split: one of `SPLITS`.
        count: int. Number of strings.
        images: optional uint8 `(N, 8, 8)` digit images; defaults to `load_digits()`'s.
        labels: optional int `(N,)` digit classes matching `images`.

    Yields:
        dicts with `image` (uint8 `CANVAS_SHAPE`), `label` (str), `digit_indices`
        (int64 `(n,)`) and `boxes` (int32 `(n, 2)`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if images is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = to_pixel_scale(digits.images), digits.target
    pool = split_indices()[split]
    rng = np.random.default_rng([SEED, SPLITS.index(split)])
    for _ in range(count):
        chosen = rng.choice(pool, size=rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        boxes = sample_layout(rng, len(chosen))
        yield {
            "image": render(images[chosen], boxes),
            "label": "".join(str(int(labels[i])) for i in chosen),
            "digit_indices": chosen.astype("int64"),
            "boxes": boxes,
        }


@dataclasses.dataclass
class DigitStringsConfig(tfds.core.BuilderConfig):
    """Split sizes of one `digit_strings` config."""

    train_size: int = 20000
    validation_size: int = 2000
    test_size: int = 2000


class DigitStrings(tfds.core.GeneratorBasedBuilder):
    """Strings of 1-5 UCI handwritten digits on a 16x64x1 canvas; label: the string.

    Example:
        >>> builder = tfds.builder("digit_strings/small", data_dir="/tmp/tfds")
        >>> builder.download_and_prepare()
        >>> ds = builder.as_dataset(split="train", as_supervised=True)
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DigitStringsConfig(name="default", description="20000 / 2000 / 2000 strings."),
        DigitStringsConfig(name="small", description="2000 / 500 / 500 strings.",
                           train_size=2000, validation_size=500, test_size=500),
    ]
    #: keras-vit marker: preparing this dataset needs no download.
    REQUIRES_DOWNLOAD = False
    # As for `uci_digits`: tfds' own code_path lookup needs importlib_resources.
    code_path = epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=CANVAS_SHAPE, dtype=np.uint8),
                "label": tfds.features.Text(),
                "digit_indices": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "boxes": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            # Keep generation order; the input pipeline shuffles.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the digits are inside scikit-learn.
        sizes = {"train": self.builder_config.train_size,
                 "validation": self.builder_config.validation_size,
                 "test": self.builder_config.test_size}
        return {split: self._generate_examples(split, count) for split, count in sizes.items()}

    def _generate_examples(self, split, count):
        # PIL images make tfds PNG-encode with PIL instead of starting a TF session.
        from PIL import Image as PILImage

        for key, example in enumerate(generate_strings(split, count)):
            example["image"] = PILImage.fromarray(example["image"][:, :, 0], mode="L")
            yield key, example
