"""Choice lists and source names of the input pipelines, defined once.

This module imports nothing heavy (no TensorFlow), so command-line parsers can
build `choices=` and `--help` texts from it without paying for a TF import.

Example:
    >>> from pipelines.data.options import AUGMENTATIONS, BAD_IMAGE_POLICIES
    >>> "crop_flip" in AUGMENTATIONS, BAD_IMAGE_POLICIES
    (True, ('error', 'skip'))
"""

#: Source name of the UCI digits bundled with scikit-learn (the default source).
DIGITS_SOURCE = "digits"
#: Prefix that forces a source to be read as an image folder.
FOLDER_PREFIX = "folder:"

#: Training augmentations accepted by `load_datasets(augmentation=...)`.
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip", "affine")
#: Text in images is not mirror-symmetric: the sequence task never flips.
SEQUENCE_AUGMENTATIONS = ("none", "crop", "affine")

#: What `load_datasets(on_bad_image=...)` does with an image folder file that cannot
#: be decoded: "error" raises a ValueError naming it before anything trains, "skip"
#: leaves it out with one warning.
BAD_IMAGE_POLICIES = ("error", "skip")

#: File name endings read from image folders (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: Sub-folder names of an image folder that holds its own splits, per role.
SPLIT_FOLDER_NAMES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


def describe_sources() -> str:
    """Human-readable list of data sources and augmentations, for --help texts.

    Returns:
        A multi-line string.

    Example:
        >>> print(describe_sources())  # doctest: +ELLIPSIS
        data sources:...
    """
    return "\n".join(
        [
            "data sources:",
            "  digits              (default) UCI handwritten digits: 1,797 8x8 grayscale",
            "                      images, 10 classes, bundled with scikit-learn (no network);",
            "                      fixed splits train 1149 / validation 288 / test 360",
            "  NAME[:VERSION]      a tensorflow-datasets image classification dataset, e.g.",
            "                      mnist, fashion_mnist, cifar10, mnist:3.0.1; downloaded into",
            "                      the data dir on first use (with --offline it must already",
            "                      be prepared there); a missing validation split is carved",
            "                      from train with the validation fraction",
            "  PATH, folder:PATH   an image folder with one sub-folder per class holding",
            "                      JPEG/PNG files, or with train/, validation/ (or val/) and",
            "                      test/ sub-folders that each hold one sub-folder per class;",
            "                      given splits are used as they are, a missing validation or",
            "                      test split is a seeded, stratified validation-fraction share",
            "                      of every training class; every file is checked before",
            "                      training: an unreadable one is an error naming it, or is",
            "                      left out with a warning (bad-image policies: "
            + ", ".join(BAD_IMAGE_POLICIES) + ")",
            "augmentations (training split only): " + ", ".join(AUGMENTATIONS),
            "  default: train takes its preset's (affine for images up to 64 pixels,",
            "  the digits included); otherwise, and always in tune, crop (pad then",
            "  random crop back) for digits, characters and grayscale sources, crop_flip",
            "  for colour images",
        ]
    )
