"""Tests of the `digit_strings` tfds builder (pipelines/data/digit_strings.py).

Every stored example is checked against scikit-learn's digits directly: each
digit window of the image is the listed UCI image rescaled to 0..255, the rest
of the canvas is black, and the label spells the listed images' classes.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from pipelines.data import digit_strings
from pipelines.data.digit_strings import (
    CANVAS_SHAPE,
    DIGIT_SIZE,
    JITTER,
    MAX_DIGITS,
    MAX_GAP,
    generate_strings,
)
from pipelines.digits_dataset import split_indices

SMALL_SIZES = {"train": 2000, "validation": 500, "test": 500}


@pytest.fixture(scope="module")
def uci():
    digits = load_digits()
    return np.round(digits.images * 255.0 / 16.0).astype(np.uint8), digits.target


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    builder = tfds.builder("digit_strings/small", data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return builder


def check_example(example, uci_images, uci_labels):
    image, indices, boxes = example["image"], example["digit_indices"], example["boxes"]
    label = example["label"]
    label = label.decode() if isinstance(label, bytes) else label
    assert image.shape == CANVAS_SHAPE and image.dtype == np.uint8
    assert 1 <= len(indices) <= MAX_DIGITS and boxes.shape == (len(indices), 2)
    assert label == "".join(str(uci_labels[i]) for i in indices)
    covered = np.zeros(CANVAS_SHAPE[:2], bool)
    for index, (row, col) in zip(indices, boxes):
        window = image[row:row + DIGIT_SIZE, col:col + DIGIT_SIZE, 0]
        np.testing.assert_array_equal(window, uci_images[index])
        covered[row:row + DIGIT_SIZE, col:col + DIGIT_SIZE] = True
    assert not image[~covered].any(), "ink outside the digit boxes"


def test_generated_examples_are_the_listed_digit_images(uci):
    for split in ("train", "test"):
        for example in generate_strings(split, 200):
            check_example(example, *uci)


def test_layout_is_left_to_right_with_small_gaps_and_jitter():
    lengths = []
    for example in generate_strings("train", 500):
        rows, cols = example["boxes"][:, 0], example["boxes"][:, 1]
        lengths.append(len(cols))
        assert rows.min() >= 0 and rows.max() <= CANVAS_SHAPE[0] - DIGIT_SIZE
        assert cols.min() >= 0 and cols.max() <= CANVAS_SHAPE[1] - DIGIT_SIZE
        gaps = np.diff(cols) - DIGIT_SIZE
        assert np.all((gaps >= 0) & (gaps <= MAX_GAP))
        assert rows.max() - rows.min() <= 2 * JITTER
    assert set(lengths) == set(range(1, MAX_DIGITS + 1))


def test_splits_draw_only_from_their_digit_split():
    used = {}
    for split in ("train", "validation", "test"):
        used[split] = np.concatenate([e["digit_indices"] for e in generate_strings(split, 500)])
        assert np.isin(used[split], split_indices()[split]).all()
    assert not np.intersect1d(used["train"], used["test"]).size
    assert not np.intersect1d(used["train"], used["validation"]).size


def test_generation_is_deterministic_and_differs_between_splits():
    first = [e["label"] for e in generate_strings("validation", 100)]
    again = [e["label"] for e in generate_strings("validation", 100)]
    other = [e["label"] for e in generate_strings("test", 100)]
    assert first == again and first != other


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="'dev'"):
        next(generate_strings("dev", 1))


def test_tfds_builder_prepares_the_generated_examples(prepared, uci):
    assert prepared.name == digit_strings.BUILDER_NAME
    assert {s: prepared.info.splits[s].num_examples for s in SMALL_SIZES} == SMALL_SIZES
    for split, count in SMALL_SIZES.items():
        stored = tfds.as_numpy(prepared.as_dataset(split=split))
        for example, expected in zip(stored, generate_strings(split, count)):
            np.testing.assert_array_equal(example["image"], expected["image"])
            assert example["label"].decode() == expected["label"]
            np.testing.assert_array_equal(example["boxes"], expected["boxes"])
    image, label = next(iter(tfds.as_numpy(prepared.as_dataset(split="test",
                                                               as_supervised=True))))
    assert image.shape == CANVAS_SHAPE and label.decode().isdigit()
    check_example(next(iter(tfds.as_numpy(prepared.as_dataset(split="test")))), *uci)
