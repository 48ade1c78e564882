"""Input pipelines: one entry point for every data source of keras-vit.

`load_datasets` returns batched, prefetched `tf.data.Dataset`s of
`(image, label)` for training, validation and test, whatever the source:

* ``"digits"`` (default): the UCI handwritten digits bundled with scikit-learn,
  prepared through tfds by `pipelines.data.digits` -- no network needed;
* any tensorflow-datasets name (``"mnist"``, ``"cifar10"``, ``"mnist:3.0.1"``, ...);
* an image folder (a path, or ``"folder:PATH"``) with one sub-folder per class,
  or with train/, validation/ (val/) and test/ sub-folders of class folders.

Conventions shared with the rest of the package:

* images are float32 in RAW PIXEL SCALE [0, 255] with shape (H, W, C);
  normalisation happens inside the model, never here;
* labels are int32 class indices;
* validation and test are never augmented and never shuffled;
* stages: parallel decode -> cache (when it fits; before augmentation) ->
  seeded shuffle -> augmentation (train only) -> batch -> prefetch.

Modules, one job each:

* `options`: choice lists (`AUGMENTATIONS`, `BAD_IMAGE_POLICIES`), source names,
  `describe_sources` -- no TensorFlow import, for CLI parsers;
* `info`: `DatasetInfo`, `Datasets`;
* `loading`: `load_datasets`;  `arguments`: argument and source-name checks;
* `tfds_source`: tfds datasets;  `digits`: the offline ``uci_digits`` tfds builder;
* `folder`: image folders (layouts, carving);  `image_scan`: the pre-training
  file check, bad-file policy and conversion report;  `images`: the one decoding path;
* `augmentation`: flip / crop / rotate-zoom;  `stages`: cache, shuffle, batch, prefetch.

The TensorFlow-backed names (`load_datasets`, `rotate_zoom`, ...) are imported on
first access, so `from pipelines.data import AUGMENTATIONS` stays cheap.

Example:
    >>> from pipelines.data import load_datasets
    >>> data = load_datasets("digits", batch_size=32, data_dir="/tmp/tfds")
    >>> data.info.image_shape, data.info.num_classes
    ((8, 8, 1), 10)
    >>> images, labels = next(iter(data.train))
    >>> images.dtype.name, labels.dtype.name
    ('float32', 'int32')
"""

import importlib

from pipelines.data.info import DatasetInfo, Datasets
from pipelines.data.options import (
    AUGMENTATIONS,
    BAD_IMAGE_POLICIES,
    DIGITS_SOURCE,
    FOLDER_PREFIX,
    IMAGE_EXTENSIONS,
    SPLIT_FOLDER_NAMES,
    describe_sources,
)

# Public names that need TensorFlow, by defining module (imported on first access).
_LAZY = {
    "load_datasets": "loading",
    "rotate_zoom": "augmentation",
    "AFFINE_DEGREES": "augmentation",
    "AFFINE_ZOOM": "augmentation",
    "AFFINE_PROBABILITY": "augmentation",
    "CACHE_BUDGET_BYTES": "stages",
    "VALIDATION_SPLIT_NAMES": "tfds_source",
    "NO_FLIP_DATASETS": "tfds_source",
}

__all__ = [
    "AFFINE_DEGREES",
    "AFFINE_PROBABILITY",
    "AFFINE_ZOOM",
    "AUGMENTATIONS",
    "BAD_IMAGE_POLICIES",
    "CACHE_BUDGET_BYTES",
    "DIGITS_SOURCE",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "NO_FLIP_DATASETS",
    "SPLIT_FOLDER_NAMES",
    "VALIDATION_SPLIT_NAMES",
    "DatasetInfo",
    "Datasets",
    "describe_sources",
    "load_datasets",
    "rotate_zoom",
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # Later lookups skip this hook.
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
