"""The records `load_datasets` returns: `DatasetInfo` and `Datasets` (TF-free module).

Example:
    >>> from pipelines.data.info import DatasetInfo
    >>> info = DatasetInfo("pets", (32, 32, 3), 2, ["cat", "dog"], 80, 10, 10)
    >>> info.split_sizes
    {'train': 80, 'validation': 10, 'test': 10}
"""

import dataclasses


@dataclasses.dataclass
class DatasetInfo:
    """What a model (and the job's log) needs to know about the data.

    Attributes:
        name: dataset name (tfds builder name, or the folder's base name).
        image_shape: (H, W, C) of the images the datasets yield (after resize).
        num_classes: number of classes; labels are in [0, num_classes).
        class_names: one name per class index.
        num_train, num_validation, num_test: examples per split (unbatched).
        split_origins: where each split comes from, per role, e.g.
            {"train": "train/", "validation": "carved from train/ (20%)", ...}.
        conversions: one line saying which images are resized or have their
            channels converted (from what to what, how many); "" when none.
        skipped_files: image folder files left out by `on_bad_image="skip"`.

    Example:
        >>> info.num_train + info.num_validation + info.num_test
        100
    """

    name: str
    image_shape: tuple
    num_classes: int
    class_names: list
    num_train: int
    num_validation: int
    num_test: int
    split_origins: dict = dataclasses.field(default_factory=dict)
    conversions: str = ""
    skipped_files: tuple = ()

    @property
    def split_sizes(self):
        """{"train": n, "validation": n, "test": n}."""
        return {"train": self.num_train, "validation": self.num_validation,
                "test": self.num_test}


@dataclasses.dataclass
class Datasets:
    """The three batched pipelines (`tf.data.Dataset`) plus their `DatasetInfo`.

    Example:
        >>> data = load_datasets("digits")
        >>> model.fit(data.train, validation_data=data.validation)
    """

    train: "tf.data.Dataset"  # noqa: F821 -- annotation only; this module stays TF-free.
    validation: "tf.data.Dataset"  # noqa: F821
    test: "tf.data.Dataset"  # noqa: F821
    info: DatasetInfo


@dataclasses.dataclass
class SourceSplits:
    """Unbatched, decoded (image, label) datasets of a source, before the shared stages.

    Images are uint8 or float32 with a static (H, W, C) shape, labels int32.
    `flip_invariant` says whether mirrored images stay plausible (the default
    augmentation flips only then). `files` is {role: `pipelines.data.folder.FileSplit`}
    for sources read file by file (image folders), None otherwise: a training
    split that is not cached is then shuffled as file names and decoded in
    training batches (`pipelines.data.stages.finish`).
    """

    train: "tf.data.Dataset"  # noqa: F821
    validation: "tf.data.Dataset"  # noqa: F821
    test: "tf.data.Dataset"  # noqa: F821
    info: DatasetInfo
    flip_invariant: bool
    files: dict = None
