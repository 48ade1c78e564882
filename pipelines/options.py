"""Every choice list of the job command lines, defined once.

`keras-vit train` and `keras-vit tune` build their `choices=` from these
tuples, and the jobs check API-given values against the same ones, so a new
augmentation, bad-image policy, pooling or precision shows up everywhere at once. Each tuple is
imported from the module that implements the choice.

Example:
>>> from pipelines.options import AUGMENTATIONS
>>> "affine" in AUGMENTATIONS
True
"""

from keras_vit.layers.pooling import POOLING_MODES as POOLINGS
from keras_vit.models.vit import POSITION_EMBEDDINGS
from pipelines.data import AUGMENTATIONS, BAD_IMAGE_POLICIES
from pipelines.data.options import SEQUENCE_AUGMENTATIONS
from pipelines.distribute import STRATEGIES
from pipelines.precision import PRECISIONS

#: keras-tuner search algorithms of `keras-vit tune` (`pipelines.tuning.tuners`).
#: `keras-vit train --task`: image classification or image-to-sequence (pipelines/sequence).
TASKS = ("classify", "sequence")

TUNERS = ("random", "hyperband", "bayesian", "grid")

#: Keras `fit` verbosity levels.
VERBOSITY = (0, 1, 2)

#: The data source both jobs use when `--dataset` is not given.
DEFAULT_DATASET = "digits"

__all__ = ["AUGMENTATIONS", "BAD_IMAGE_POLICIES", "DEFAULT_DATASET", "POOLINGS",
           "POSITION_EMBEDDINGS", "PRECISIONS", "SEQUENCE_AUGMENTATIONS", "STRATEGIES", "TUNERS",
           "VERBOSITY"]
