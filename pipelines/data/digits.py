"""The UCI handwritten digits as a TensorFlow Datasets builder (no network needed).

scikit-learn ships the 1,797 8x8 grayscale digit images of the UCI "Optical
Recognition of Handwritten Digits" data set inside its wheel
(`sklearn.datasets.load_digits`). This module exposes them as a regular
`tfds.core.GeneratorBasedBuilder` named ``uci_digits``, so the default data source
of keras-vit is prepared, cached on disk and loaded through tfds exactly like
"mnist" or "cifar10" -- but `download_and_prepare` never touches the network.

Importing this module registers the builder (tfds registers every
`DatasetBuilder` subclass by its snake_case class name). `pipelines.data` maps the
source name ``"digits"`` to it. The old import path `pipelines.digits_dataset`
re-exports this module; data dirs prepared under either name stay valid (the
builder name, version and features are unchanged).

Example:
    >>> import tensorflow_datasets as tfds
    >>> import pipelines.data.digits  # registers "uci_digits"
    >>> builder = tfds.builder("uci_digits", data_dir="/tmp/tfds")
    >>> builder.download_and_prepare()  # reads scikit-learn, writes TFRecords
    >>> builder.info.splits["test"].num_examples
    360
"""

import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

#: Name under which tfds registers `UciDigits` (snake_case of the class name).
BUILDER_NAME = "uci_digits"

#: Fraction of all examples held out as the test split, and then of the rest as
#: the validation split (both stratified, `random_state=0`).
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0

_HOMEPAGE = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"

_CITATION = r"""
@misc{alpaydin1998optdigits,
  author       = {Alpaydin, E. and Kaynak, C.},
  title        = {{Optical Recognition of Handwritten Digits}},
  year         = {1998},
  howpublished = {UCI Machine Learning Repository},
  note         = {{DOI}: https://doi.org/10.24432/C50P49}
}
"""

_DESCRIPTION = """\
The 1,797 8x8 grayscale handwritten digit images (classes 0-9) of the UCI
"Optical Recognition of Handwritten Digits" data set, as shipped by scikit-learn
(`sklearn.datasets.load_digits`). Each pixel counts the "on" pixels of a 4x4
block of a 32x32 bitmap (0..16); it is stored rescaled to 0..255 as
round(v * 255 / 16), which is one-to-one, so nothing is lost.

Splits are fixed and stratified: test = 20% of all images, validation = 20% of
the remainder, train = the rest (1149 / 288 / 360), both carved with
`sklearn.model_selection.train_test_split(..., stratify=labels, random_state=0)`.
"""


def to_pixel_scale(counts):
    """Maps sklearn's 0..16 block counts to uint8 pixels in 0..255.

    Args:
        counts: array of values in 0..16 (any numeric dtype).

    Returns:
        uint8 array of the same shape, `round(counts * 255 / 16)`.

    Example:
        >>> to_pixel_scale(np.array([0, 8, 16])).tolist()
        [0, 128, 255]
    """
    # The map is strictly increasing on 0..16, so it is injective: no information
    # is lost, and every source of keras-vit shares the same [0, 255] scale.
    return np.round(np.asarray(counts, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def split_indices():
    """Indices into `load_digits()` of the fixed train/validation/test splits.

    Returns:
        dict mapping "train", "validation", "test" to int64 index arrays, each in
        the order `train_test_split` returns them.

    Example:
        >>> {k: len(v) for k, v in split_indices().items()}
        {'train': 1149, 'validation': 288, 'test': 360}
    """
    # Imported lazily: sklearn is only needed while preparing the dataset.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=HOLDOUT_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    train, validation = train_test_split(
        rest, test_size=HOLDOUT_FRACTION, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return {"train": train, "validation": validation, "test": test}


class UciDigits(tfds.core.GeneratorBasedBuilder):
    """UCI handwritten digits (8x8x1, 10 classes), read from scikit-learn offline.

    Source: E. Alpaydin and C. Kaynak (1998), "Optical Recognition of Handwritten
    Digits", UCI Machine Learning Repository, https://doi.org/10.24432/C50P49
    (scikit-learn ships 1,797 of its images as `sklearn.datasets.load_digits`).

    Example:
        >>> builder = tfds.builder("uci_digits", data_dir="/tmp/tfds")
        >>> builder.download_and_prepare()
        >>> ds = builder.as_dataset(split="train", as_supervised=True)
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: sklearn load_digits, pixels rescaled to 0..255, "
        "fixed stratified splits train 1149 / validation 288 / test 360.",
    }
    #: keras-vit marker: preparing this dataset needs no download, so
    #: `load_datasets(..., offline=True)` may still prepare it.
    REQUIRES_DOWNLOAD = False
    # tfds derives `code_path` (where it looks for checksums.tsv) through
    # `importlib_resources`, which the pinned environment does not ship; the
    # builder's own file is the right answer and needs no import.
    code_path = epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
            # Keep the order train_test_split produced; the input pipeline shuffles.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data is inside scikit-learn.
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = to_pixel_scale(digits.images)  # (N, 8, 8) uint8
        # Handing tfds PIL images makes it PNG-encode with PIL; numpy arrays go
        # through a TF graph session that costs seconds to start up.
        from PIL import Image as PILImage

        for position, i in enumerate(indices):
            # With `disable_shuffling` tfds writes examples sorted by key, so the
            # position keeps each split in the order train_test_split returned.
            image = PILImage.fromarray(images[i], mode="L")
            yield position, {"image": image, "label": int(digits.target[i])}
