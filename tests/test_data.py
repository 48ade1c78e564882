"""Tests of the input pipelines (the pipelines/data package, pipelines/digits_dataset.py).

Everything is written under pytest's tmp paths and nothing is downloaded: the
digits come from scikit-learn, tfds datasets by name are mocked with
`tfds.testing.mock_data`, image folders are generated on the fly.
"""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipelines.data import (
    AUGMENTATIONS,
    BAD_IMAGE_POLICIES,
    describe_sources,
    load_datasets,
)
from pipelines.data.stages import even_batch_size

SPLITS = ("train", "validation", "test")
EXPECTED_DIGITS_SIZES = {"train": 1149, "validation": 288, "test": 360}


# ---------------------------------------------------------------------- helpers


def collect(ds):
    """All (images, labels) of a batched dataset as numpy arrays."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def first_batches(ds, n=2):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def digits_reference():
    """Pixels and labels straight from sklearn, on the [0, 255] scale."""
    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target


def digits_multiset():
    """Counter of (image bytes as (8, 8, 1) uint8, label) over all 1,797 digits."""
    pixels, targets = digits_reference()
    return collections.Counter((x[..., None].tobytes(), int(t)) for x, t in zip(pixels, targets))


def fake_tfds_metadata(data_dir, name, split_sizes):
    """Writes the dataset_info.json / features.json tfds needs to know the splits.

    `tfds.testing.mock_data` replaces the examples but, without metadata, leaves
    the split list empty; real metadata makes the mocked dataset look prepared.
    """
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
                for split, n in split_sizes.items()
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A tfds data_dir with uci_digits prepared once for the whole module."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    load_datasets("digits", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="module")
def digits(digits_dir):
    data = load_datasets("digits", data_dir=digits_dir, batch_size=100, deterministic=True)
    return data, {split: collect(getattr(data, split)) for split in SPLITS}


def crop_offsets(image, pad=1):
    """Every image a pad-then-crop-back of `image` (H, W, C) can produce."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return [
        padded[dy : dy + height, dx : dx + width]
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    ]


# ----------------------------------------------------------------------- digits


def test_digits_info_and_split_sizes(digits):
    data, arrays = digits
    info = data.info
    assert info.name == "uci_digits"
    assert info.image_shape == (8, 8, 1)
    assert info.num_classes == 10
    assert info.class_names == [str(d) for d in range(10)]
    assert (info.num_train, info.num_validation, info.num_test) == (1149, 288, 360)
    assert {split: len(arrays[split][1]) for split in SPLITS} == EXPECTED_DIGITS_SIZES


def test_digits_images_are_float32_raw_pixels(digits):
    data, arrays = digits
    images, labels = next(iter(data.train))
    assert images.dtype.name == "float32" and labels.dtype.name == "int32"
    assert images.shape[1:] == (8, 8, 1)
    levels = np.round(np.arange(17) * 255 / 16)
    for split in SPLITS:
        x, y = arrays[split]
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
        assert x.min() == 0.0 and x.max() == 255.0
        assert set(np.unique(y)) == set(range(10))
        if split != "train":  # Unaugmented: only the 17 rescaled sklearn levels.
            assert np.isin(x, levels).all()


def test_digits_test_split_equals_sklearn_reference(digits):
    _, arrays = digits
    pixels, targets = digits_reference()
    indices = np.arange(len(targets))
    _, test_idx = train_test_split(indices, test_size=0.2, stratify=targets, random_state=0)
    x, y = arrays["test"]
    np.testing.assert_array_equal(x[..., 0], pixels[test_idx].astype(np.float32))
    np.testing.assert_array_equal(y, targets[test_idx])


def test_digits_splits_partition_the_data_and_are_stratified(digits):
    _, arrays = digits
    _, targets = digits_reference()
    keys = {
        split: collections.Counter(
            (x.astype(np.uint8).tobytes(), int(label))
            for x, label in zip(arrays[split][0], arrays[split][1])
        )
        for split in ("validation", "test")
    }
    everything = digits_multiset()
    assert len(everything) == len(targets)  # sklearn digits has no duplicates.
    # Validation and test are unaugmented: compare exact bytes.
    assert not keys["validation"] & keys["test"]
    assert not (keys["validation"] + keys["test"]) - everything
    # Train (augmented) is the remainder: its label counts complete the dataset.
    train_counts = collections.Counter(arrays["train"][1].tolist())
    held_out = collections.Counter()
    for (_, label), count in (keys["validation"] + keys["test"]).items():
        held_out[label] += count
    assert train_counts + held_out == collections.Counter(targets.tolist())
    for split in SPLITS:
        counts = collections.Counter(arrays[split][1].tolist())
        share = EXPECTED_DIGITS_SIZES[split] / len(targets)
        for label, total in collections.Counter(targets.tolist()).items():
            assert abs(counts[label] - share * total) <= 2, (split, label)


def test_digits_train_split_partitions_with_augmentation_off(digits_dir):
    data = load_datasets("digits", data_dir=digits_dir, batch_size=500, augment=False)
    seen = collections.Counter()
    for split in SPLITS:
        x, y = collect(getattr(data, split))
        seen.update((img.astype(np.uint8).tobytes(), int(t)) for img, t in zip(x, y))
    assert seen == digits_multiset()  # Every example exactly once across the three splits.


def test_deterministic_runs_give_identical_batches(digits_dir):
    kwargs = dict(data_dir=digits_dir, batch_size=32, deterministic=True, seed=3)
    first = first_batches(load_datasets("digits", **kwargs).train)
    second = first_batches(load_datasets("digits", **kwargs).train)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other = first_batches(load_datasets("digits", **{**kwargs, "seed": 4}).train)
    assert not np.array_equal(first[0][1], other[0][1])  # The seed matters.


def test_validation_and_test_are_not_augmented_nor_shuffled(digits_dir, digits):
    _, reference = digits
    for augmentation in ("crop_flip", "none"):
        data = load_datasets(
            "digits", data_dir=digits_dir, batch_size=100, augmentation=augmentation, seed=7
        )
        for split in ("validation", "test"):
            x, y = collect(getattr(data, split))
            np.testing.assert_array_equal(x, reference[split][0])
            np.testing.assert_array_equal(y, reference[split][1])


def test_only_the_training_pipeline_turns_tf_data_autotuning_off(digits_dir):
    """Its model thread, joined when the whole-run iterator is destroyed, held up the end
    of `fit` (`pipelines.data.stages.training_options`); evaluation keeps autotuning."""
    for augmentation in ("none", "affine"):
        data = load_datasets("digits", data_dir=digits_dir, batch_size=100,
                             augmentation=augmentation)
        assert data.train.options().autotune.enabled is False
        assert data.train.options().deterministic is False  # what it was: only order relaxed
        for split in ("validation", "test"):
            assert getattr(data, split).options().autotune.enabled is not False
            assert getattr(data, split).options().deterministic is True
    deterministic = load_datasets("digits", data_dir=digits_dir, deterministic=True)
    assert deterministic.train.options().autotune.enabled is False
    assert deterministic.train.options().deterministic is True


def test_digits_default_augmentation_is_a_one_pixel_translation(digits_dir):
    kwargs = dict(data_dir=digits_dir, batch_size=64, deterministic=True)
    plain = first_batches(load_datasets("digits", augmentation="none", **kwargs).train)
    moved = first_batches(load_datasets("digits", **kwargs).train)
    changed = 0
    for (x0, y0), (x1, y1) in zip(plain, moved):
        np.testing.assert_array_equal(y0, y1)  # Same shuffle order.
        for original, augmented in zip(x0, x1):
            # Every output is a shifted copy (no flip: digits are not symmetric).
            assert any(np.array_equal(augmented, c) for c in crop_offsets(original))
            changed += not np.array_equal(original, augmented)
    assert changed > 0


def test_flip_augmentation_mirrors_some_images(digits_dir):
    kwargs = dict(data_dir=digits_dir, batch_size=64, deterministic=True)
    plain = first_batches(load_datasets("digits", augmentation="none", **kwargs).train, 1)
    flipped = first_batches(load_datasets("digits", augmentation="flip", **kwargs).train, 1)
    mirrored = 0
    for original, augmented in zip(plain[0][0], flipped[0][0]):
        mirror = original[:, ::-1]
        assert np.array_equal(augmented, original) or np.array_equal(augmented, mirror)
        mirrored += np.array_equal(augmented, mirror) and not np.array_equal(original, mirror)
    assert mirrored > 0


def test_digits_resize_and_offline_preparation(tmp_path):
    # Digits need no download, so offline=True still prepares them.
    data = load_datasets(
        "digits", data_dir=str(tmp_path), offline=True, image_size=(16, 12), batch_size=8
    )
    images, _ = next(iter(data.validation))
    assert data.info.image_shape == (16, 12, 1)
    assert images.shape == (8, 16, 12, 1)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    assert data.info.conversions == "uci_digits: resized all 1797 images from 8x8 to 16x12"
    assert load_datasets("digits", data_dir=str(tmp_path)).info.conversions == ""


def test_describe_sources_mentions_every_kind():
    text = describe_sources()
    for word in ("digits", "mnist", "folder:", "train/", "val/", "test/"):
        assert word in text
    # The choice lists CLI parsers use are the ones the help text lists.
    assert "augmentations (training split only): " + ", ".join(AUGMENTATIONS) in text
    assert "bad-image policies: " + ", ".join(BAD_IMAGE_POLICIES) in text


# ------------------------------------------------------------------ tfds by name


def test_tfds_mnist_without_validation_split_is_carved_from_train(tmp_path):
    fake_tfds_metadata(tmp_path, "mnist", {"train": 60000, "test": 10000})
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        data = load_datasets("mnist", data_dir=str(tmp_path), batch_size=5)
        arrays = {split: collect(getattr(data, split)) for split in SPLITS}
    info = data.info
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.class_names == [str(d) for d in range(10)]
    # 20% of train becomes validation; the dataset's own test split is kept.
    assert (info.num_train, info.num_validation, info.num_test) == (48000, 12000, 10000)
    assert info.split_origins == {"train": "train[:48000]", "validation": "train[48000:60000]",
                                  "test": "test"}
    for x, y in arrays.values():
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1)
        assert y.dtype == np.int32 and ((0 <= y) & (y < 10)).all()
        assert 0.0 <= x.min() and x.max() <= 255.0


def test_tfds_cifar10_colour_images_and_resize(tmp_path):
    fake_tfds_metadata(tmp_path, "cifar10", {"train": 50000, "test": 10000})
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        data = load_datasets("cifar10", data_dir=str(tmp_path), batch_size=4)
        images, labels = next(iter(data.train))
        small = load_datasets(
            "cifar10:3.0.2", data_dir=str(tmp_path), batch_size=4, image_size=16,
            validation_fraction=0.1,
        )
        small_images, _ = next(iter(small.test))
    assert data.info.image_shape == (32, 32, 3) and data.info.num_classes == 10
    # cifar10 reads its class names while downloading; the fake metadata has none.
    assert len(data.info.class_names) == 10
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (
        40000, 10000, 10000,
    )
    assert images.shape == (4, 32, 32, 3) and images.dtype.name == "float32"
    assert labels.dtype.name == "int32"
    assert (small.info.num_train, small.info.num_validation) == (45000, 5000)
    assert small.info.image_shape == (16, 16, 3) and small_images.shape == (4, 16, 16, 3)


def test_tfds_own_validation_split_is_used_and_variable_size_needs_image_size(tmp_path):
    sizes = {"train": 1020, "validation": 1020, "test": 6149}
    fake_tfds_metadata(tmp_path, "oxford_flowers102", sizes)
    with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
        data = load_datasets(
            "oxford_flowers102", data_dir=str(tmp_path), batch_size=5, image_size=(10, 12)
        )
        images, _ = next(iter(data.validation))
        with pytest.raises(ValueError, match="oxford_flowers102.*image_size"):
            load_datasets("oxford_flowers102", data_dir=str(tmp_path))
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (
        1020, 1020, 6149,
    )
    assert data.info.num_classes == 102
    assert data.info.conversions == (
        "oxford_flowers102: resized all 8189 images from their own sizes to 10x12")
    assert data.info.split_origins == {"train": "train", "validation": "validation",
                                       "test": "test"}
    assert images.shape == (5, 10, 12, 3)


# ------------------------------------------------------------------- bad input


def test_unknown_dataset_name_fails_before_touching_data_dir(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        load_datasets("no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'mnsit'.*did you mean 'mnist'"):
        load_datasets("mnsit", data_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("source, expected", [
    ("mnist/bogus", "'mnist' has no config 'bogus'; expected none: 'mnist' has no configs, use "
                    "'mnist'"),
    ("emnist/bogus:3.1.0", "'emnist' has no config 'bogus'; expected one of ['byclass', "
                           "'bymerge', 'balanced', 'letters', 'digits', 'mnist']"),
])
def test_unknown_dataset_config_names_the_configs_there_are(tmp_path, source, expected):
    # tfds' own message listed "BuilderConfigs whose name closely match:" and nothing.
    with pytest.raises(ValueError) as error:
        load_datasets(source, data_dir=str(tmp_path))
    assert f"cannot load tensorflow-datasets source {source!r}: {expected}" in str(error.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(validation_fraction=0), "validation_fraction=0:"),
        (dict(validation_fraction=1.5), r"validation_fraction=1\.5:"),
        (dict(validation_fraction=1), "validation_fraction=1:"),
        (dict(batch_size=0), "batch_size=0:"),
        (dict(batch_size=-3), "batch_size=-3:"),
        (dict(image_size=(0, 8)), r"image_size=\(0, 8\):"),
        (dict(image_size=(8,)), r"image_size=\(8,\):"),
        (dict(augmentation="rotate"), "augmentation='rotate':"),
        (dict(shuffle_buffer=0), "shuffle_buffer=0:"),
        (dict(on_bad_image="ignore"), r"on_bad_image='ignore': expected one of \['error', 'skip'\]"),
        (dict(on_bad_image=None), "on_bad_image=None:"),
    ],
)
def test_bad_arguments_fail_naming_the_value(kwargs, pattern):
    # Argument checks come first: nothing is prepared, so no data_dir is needed.
    with pytest.raises(ValueError, match=pattern):
        load_datasets("digits", **kwargs)


def test_offline_unprepared_dataset_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="'mnist' is not prepared in .*offline=True"):
        load_datasets("mnist", data_dir=str(tmp_path), offline=True)


def test_rotate_zoom_matches_scipy_affine_transform():
    """The affine augmentation's warp against scipy's bilinear affine_transform."""
    from scipy import ndimage

    from pipelines.data import rotate_zoom

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(9, 7, 2)).astype("float32")
    angle, zoom = 0.3, 1.15
    got = rotate_zoom(tf.constant(image), angle, zoom).numpy()
    # scipy maps output (row, col) to input matrix @ (row, col) + offset.
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrix = np.array([[c, s], [-s, c]])  # (row, col) form of R(angle) / zoom in (x, y)
    centre = np.array([(9 - 1) / 2, (7 - 1) / 2])
    offset = centre - matrix @ centre
    expected = np.stack([ndimage.affine_transform(image[..., k], matrix, offset=offset, order=1,
                                                  mode="grid-constant", cval=0.0)
                         for k in range(2)], axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_batch_warp_composes_rotation_shift_and_flip_like_scipy():
    """One warp per batch: output pixel p shows input R((F p) + d - c) + c, bilinear, 0 outside.

    F mirrors left-right (where `mirror`), d is the (dy, dx) shift, R the
    rotation/zoom about the centre c. Reference: scipy's bilinear
    affine_transform with that map written in (row, col) form, image by image.
    Maps without rotation or zoom copy pixels exactly (unwarped images stay
    sharp): checked against numpy padding and slicing.
    """
    from scipy import ndimage

    from pipelines.data.augmentation import augmentation_matrices, warp

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, size=(4, 9, 7, 2)).astype("float32")
    angles = np.array([0.3, 0.0, -0.2, 0.0], "float32")
    zooms = np.array([1.15, 1.0, 0.9, 1.0], "float32")
    offsets = np.array([[1, -2], [0, 0], [-1, 1], [2, 2]], "int32")  # (dy, dx)
    mirror = np.array([False, True, True, False])
    got = warp(tf.constant(images),
               augmentation_matrices(angles, zooms, offsets, mirror, 9, 7)).numpy()
    centre = np.array([4.0, 3.0])
    for k in range(4):
        c, s = np.cos(angles[k]) / zooms[k], np.sin(angles[k]) / zooms[k]
        rotation = np.array([[c, s], [-s, c]])  # (row, col) form of R(angle) / zoom in (x, y)
        flip = np.diag([1.0, -1.0]) if mirror[k] else np.eye(2)
        flip_offset = np.array([0.0, 6.0]) if mirror[k] else np.zeros(2)
        matrix = rotation @ flip
        offset = rotation @ (flip_offset + offsets[k] - centre) + centre
        expected = np.stack([ndimage.affine_transform(
            images[k, ..., ch], matrix, offset=offset, order=1, mode="grid-constant", cval=0.0)
            for ch in range(2)], axis=-1)
        np.testing.assert_allclose(got[k], expected, atol=1e-3)
    np.testing.assert_array_equal(got[1], images[1, :, ::-1])
    np.testing.assert_array_equal(got[3], np.pad(images[3], ((0, 2), (0, 2), (0, 0)))[2:, 2:])


def test_shift_flip_equals_the_warp_bit_for_bit():
    """The rotation-free kinds' pixel gather gives `warp`'s pixels exactly.

    Shifts up to past the image (all zeros), flips with and without shifts,
    H != W and two channels; reference: the bilinear sampler with the same maps,
    itself checked against scipy and numpy slicing above.
    """
    from pipelines.data.augmentation import augmentation_matrices, shift_flip, warp

    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, size=(64, 9, 7, 2)).astype("float32")
    offsets = rng.integers(-10, 11, size=(64, 2)).astype("int32")
    offsets[:4] = [[0, 0], [9, 0], [0, -7], [-3, 2]]
    mirror = rng.uniform(size=64) < 0.5
    expected = warp(tf.constant(images), augmentation_matrices(
        np.zeros(64, "float32"), np.ones(64, "float32"), offsets, mirror, 9, 7)).numpy()
    got = shift_flip(tf.constant(images), tf.constant(offsets), tf.constant(mirror)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert not got[1].any() and not got[2].any()  # shifted out entirely
    empty = shift_flip(tf.zeros((0, 9, 7, 2)), tf.zeros((0, 2), tf.int32), tf.zeros((0,), bool))
    assert empty.shape == (0, 9, 7, 2)


def test_batch_augmenter_draws_per_image_and_keeps_half_the_batch_sharp():
    """Each image of a batch gets its own draw: shifts cover [-pad, pad], about half warped."""
    from pipelines.data.augmentation import batch_augmenter, shift_pad

    rng = np.random.default_rng(2)
    images = rng.uniform(1, 255, size=(400, 16, 16, 1)).astype("float32")
    assert shift_pad(images.shape[1:]) == 2
    crop = batch_augmenter("crop", (16, 16, 1))(tf.constant(images),
                                                tf.constant([3, 4], tf.int64)).numpy()
    seen = set()
    for original, shifted in zip(images, crop):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(shifted, np.pad(original, ((2, 2), (2, 2), (0, 0)))[
                       2 + dy:18 + dy, 2 + dx:18 + dx])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 25  # every shift of the 5 x 5 occurs among 400 images
    affine = batch_augmenter("affine", (16, 16, 1))(tf.constant(images),
                                                    tf.constant([5, 6], tf.int64)).numpy()
    sharp = sum(any(np.array_equal(out, c) for c in crop_offsets(original, pad=2))
                for original, out in zip(images, affine))
    assert 150 <= sharp <= 250  # AFFINE_PROBABILITY = 0.5 of 400 (binomial sd 10)
    with pytest.raises(ValueError, match="augmentation='none'"):
        batch_augmenter("none", (16, 16, 1))


def test_affine_augmentation_keeps_shape_range_and_is_deterministic(tmp_path):
    first = load_datasets("digits", batch_size=16, data_dir=str(tmp_path), augmentation="affine",
                          deterministic=True, seed=3)
    images, _ = next(iter(first.train))
    assert images.shape[1:] == (8, 8, 1) and images.dtype == tf.float32
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 255.0 + 1e-3
    again = load_datasets("digits", batch_size=16, data_dir=str(tmp_path), augmentation="affine",
                          deterministic=True, seed=3)
    np.testing.assert_array_equal(images.numpy(), next(iter(again.train))[0].numpy())


def test_drop_remainder_gives_one_training_batch_shape(tmp_path):
    data = load_datasets("digits", batch_size=64, data_dir=str(tmp_path), drop_remainder=True)
    sizes = [int(images.shape[0]) for images, _ in data.train]
    assert sizes == [64] * (1149 // 64)
    # Evaluation splits keep every example.
    assert sum(int(labels.shape[0]) for _, labels in data.test) == 360


def test_old_digits_module_reexports_the_one_registered_builder(digits_dir):
    import pipelines.digits_dataset as old_path
    from pipelines.data import digits

    assert old_path.UciDigits is digits.UciDigits
    builder = tfds.builder(old_path.BUILDER_NAME, data_dir=digits_dir)
    assert type(builder) is digits.UciDigits and builder.is_prepared()


@pytest.mark.parametrize("num_examples, batch_size", [
    (288, 128), (360, 128), (256, 128), (290, 128), (5, 128), (1, 1), (97, 8), (0, 16)])
def test_even_batch_size_keeps_the_batch_count_and_evens_the_sizes(num_examples, batch_size):
    size = even_batch_size(num_examples, batch_size)
    assert 1 <= size <= batch_size
    batches = [min(size, num_examples - start) for start in range(0, num_examples, size)]
    assert len(batches) == -(-num_examples // batch_size)  # as many batches as before
    assert sum(batches) == num_examples
    if size > 1 and num_examples:  # the smallest such size: one less needs another batch
        assert -(-num_examples // (size - 1)) > len(batches)


def test_digits_evaluation_splits_come_in_one_batch_shape(digits):
    data, _ = digits
    sizes = {split: [int(x.shape[0]) for x, _ in getattr(data, split)]
             for split in ("validation", "test")}
    batch = next(iter(data.train))[0].shape[0]
    assert sizes["validation"] == [even_batch_size(288, batch)] * (288 // even_batch_size(288, batch))
    assert len(set(sizes["test"])) == 1 and sum(sizes["test"]) == 360
