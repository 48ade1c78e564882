"""Folder datasets with labels.csv for the sequence-task tests, written from digit strings."""

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from pipelines.data.digit_strings import generate_strings

#: Digits written as letters, so the folder vocabulary differs from digit_strings'.
LETTERS = "abcdefghij"


def as_letters(text):
    return "".join(LETTERS[int(c)] for c in text)


def write_split(folder, split, count, rename=None, labels=None):
    """`count` digit-string images of `split` as PNGs plus labels.csv (letters) in `folder`.

    Args:
        folder: where to write (created).
        split: "train", "validation" or "test" (the digit images' split).
        count: number of examples.
        rename: optional fn(i) -> file name.
        labels: optional fn(i, text) -> the label written instead of `text`.

    Returns:
        list of (file name, text) written.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, example in enumerate(generate_strings(split, count)):
        name = rename(index) if rename else f"{split}_{index:03d}.png"
        Image.fromarray(example["image"][:, :, 0], mode="L").save(folder / name)
        text = as_letters(example["label"])
        rows.append((name, labels(index, text) if labels else text))
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "text"])
        writer.writerows(rows)
    return rows


def write_folder_dataset(root, sizes=(48, 12, 12)):
    """ROOT/train, ROOT/validation and ROOT/test, each with PNGs and labels.csv."""
    return {split: write_split(pathlib.Path(root) / split, split, count)
            for split, count in zip(("train", "validation", "test"), sizes)}


def rewrite_label(root, split, line, text):
    """Replaces the label on `line` (1-based, header = line 1) of ROOT/split/labels.csv."""
    path = pathlib.Path(root) / split / "labels.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows[line - 1][1] = text
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return rows[line - 1][0]


def read_png(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="session")
def digit_strings_data_dir(tmp_path_factory):
    """A tfds data_dir with `digit_strings/small` prepared once (about 15 s).

    Test modules opt in with `from sequence_fixtures import digit_strings_data_dir`.
    """
    import tensorflow_datasets as tfds

    import pipelines.data.digit_strings  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path_factory.mktemp("tfds_strings"))
    tfds.builder("digit_strings/small", data_dir=data_dir).download_and_prepare()
    return data_dir
