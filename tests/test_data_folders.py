"""Tests of image folder sources (pipelines/data/folder.py, image_scan.py).

Folders are generated under pytest's tmp paths. Most images are flat colours
whose value identifies the file, so each split's exact content can be compared
with the files the test wrote.
"""

import collections
import io
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.data import BAD_IMAGE_POLICIES, load_datasets
from pipelines.data.image_scan import BadImageError, read_header, scan_images

SPLITS = ("train", "validation", "test")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect(ds):
    """All (images, labels) of a batched dataset as numpy arrays."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def encoded(pixels, fmt, mode=None, **kwargs):
    """Bytes of `pixels` saved by Pillow in `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write_png(path, value, size=(12, 10)):
    """A flat-colour RGB PNG whose pixel value `value` identifies the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def noise(shape=(12, 10, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def flat_ids(images):
    """Per-image mean pixel value, rounded: the id of a flat-colour PNG."""
    return np.round(images.reshape(len(images), -1).mean(axis=1)).astype(int).tolist()


# ---------------------------------------------------------------- image folder

FOLDER_CLASSES = ("cat", "dog", "emu")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 10 RGB images of 12x10 (H x W), half PNG, half JPEG.

    Image i of class c is a flat colour 8 * (10 * c + i), so every file can be
    recognised after decoding (JPEG keeps flat colours within +-1).
    """
    root = tmp_path_factory.mktemp("images")
    for c, name in enumerate(FOLDER_CLASSES):
        os.makedirs(root / name)
        for i in range(10):
            value = 8 * (10 * c + i)
            pixels = np.full((12, 10, 3), value, np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"img{i:02d}.{ext}")
    (root / "notes.txt").write_text("not a class")  # Stray files are ignored.
    return str(root)


def file_ids(images):
    """Recover the file id 10 * class + index from flat-colour images."""
    return np.round(images.reshape(len(images), -1).mean(axis=1) / 8).astype(int).tolist()


def test_image_folder_classes_counts_and_stratified_split(image_folder):
    data = load_datasets(image_folder, batch_size=7, augment=False)  # Keep colours flat.
    info = data.info
    assert info.class_names == list(FOLDER_CLASSES) and info.num_classes == 3
    assert info.image_shape == (12, 10, 3)
    assert (info.num_train, info.num_validation, info.num_test) == (18, 6, 6)
    ids = {}
    for split in SPLITS:
        x, y = collect(getattr(data, split))
        assert x.dtype == np.float32 and x.shape[1:] == (12, 10, 3)
        assert collections.Counter(y.tolist()) == {
            label: {"train": 6}.get(split, 2) for label in range(3)
        }
        ids[split] = file_ids(x)
        assert [i // 10 for i in ids[split]] == y.tolist()  # Labels follow files.
    # Disjoint and complete: every file exactly once.
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == list(range(30))


def test_image_folder_split_is_seeded(image_folder):
    def validation_ids(seed):
        return file_ids(collect(load_datasets(image_folder, seed=seed).validation)[0])

    assert validation_ids(0) == validation_ids(0)
    assert validation_ids(0) != validation_ids(1)


def test_image_folder_prefix_resize_and_augmentation(image_folder):
    data = load_datasets(
        "folder:" + image_folder, image_size=(6, 5), batch_size=4, augmentation="crop_flip"
    )
    images, labels = next(iter(data.train))
    assert data.info.image_shape == (6, 5, 3)
    assert images.shape == (4, 6, 5, 3) and labels.dtype.name == "int32"
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0


def test_grayscale_image_folder_has_one_channel(tmp_path):
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        for i in range(3):
            Image.fromarray(np.full((5, 7), 40 * i, np.uint8), mode="L").save(
                tmp_path / name / f"{i}.png"
            )
    data = load_datasets(str(tmp_path), batch_size=2)
    assert data.info.image_shape == (5, 7, 1)
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (2, 2, 2)
    x, _ = collect(data.validation)
    assert x.shape == (2, 5, 7, 1)


# ------------------------------------------------------------------- bad input

def test_empty_folder_fails(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_datasets(str(tmp_path))


@pytest.mark.parametrize("layout", ["flat", "splits"])
def test_folder_with_one_class_fails_before_reading_images(tmp_path, layout):
    root = tmp_path / "train" if layout == "splits" else tmp_path
    os.makedirs(root / "cats")
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(root / "cats" / "0.png")
    with pytest.raises(ValueError, match=r"one class sub-folder \('cats'\): a classifier "
                                         r"needs at least 2 classes"):
        load_datasets(str(tmp_path))


def test_folder_without_images_fails(tmp_path):
    os.makedirs(tmp_path / "cats")
    (tmp_path / "cats" / "readme.txt").write_text("no images here")
    os.makedirs(tmp_path / "dogs")
    with pytest.raises(ValueError, match=r"\['cats', 'dogs'\] contain no images"):
        load_datasets(str(tmp_path))


def test_missing_folder_fails(tmp_path):
    with pytest.raises(ValueError, match="nowhere.*not a directory"):
        load_datasets("folder:" + str(tmp_path / "nowhere"))


def test_folder_validation_fraction_must_leave_a_training_split(image_folder):
    with pytest.raises(ValueError, match="validation_fraction=0.5"):
        load_datasets(image_folder, validation_fraction=0.5)



# ---------------------------------------------------------- split-folder layouts

LAYOUT_CLASSES = ("a", "b", "c")
#: Images per class written into each split folder when the split is given.
GIVEN_PER_CLASS = {"train": 8, "validation": 3, "test": 2}
#: First file id of each split folder (ids identify files after decoding).
ID_BASE = {"train": 0, "validation": 100, "test": 200}


def write_split_layout(root, given, folder_names=None):
    """ROOT/<split>/<class>/<id>.png for every given split; returns {role: {id: label}}."""
    folder_names = folder_names or {}
    written = {}
    for role in given:
        per_class = GIVEN_PER_CLASS[role]
        written[role] = {}
        for label, name in enumerate(LAYOUT_CLASSES):
            for i in range(per_class):
                file_id = ID_BASE[role] + per_class * label + i
                write_png(os.path.join(root, folder_names.get(role, role), name,
                                       f"{file_id}.png"), file_id)
                written[role][file_id] = label
    return written


@pytest.mark.parametrize(
    "given, folder_names",
    [
        (("train", "test"), {}),
        (("train", "validation", "test"), {"validation": "val"}),
        (("train", "validation", "test"), {}),
        (("train", "validation"), {}),
        (("train",), {}),
    ],
)
def test_split_folders_are_used_as_given_and_missing_ones_carved(tmp_path, given, folder_names):
    written = write_split_layout(tmp_path, given, folder_names)
    fraction = 0.25
    data = load_datasets(str(tmp_path), batch_size=5, augment=False,
                         validation_fraction=fraction)
    got = {}
    for role in SPLITS:
        images, labels = collect(getattr(data, role))
        got[role] = dict(zip(flat_ids(images), labels.tolist()))
        assert len(got[role]) == len(labels)  # No file twice within a split.
    carved = [role for role in SPLITS if role not in given]
    train_files = written["train"]
    # Each carved split takes round(8 * 0.25) = 2 images of every training class.
    held_out = int(np.floor(GIVEN_PER_CLASS["train"] * fraction + 0.5))
    for role in SPLITS:
        if role in given and role != "train":
            assert got[role] == written[role]  # Exactly the files of its folder.
        elif role in carved:
            assert set(got[role].items()) <= set(train_files.items())
            assert collections.Counter(got[role].values()) == {0: held_out, 1: held_out,
                                                               2: held_out}
    # Train and the carved splits partition the training folder.
    parts = [got["train"]] + [got[role] for role in carved]
    assert sum(len(p) for p in parts) == len(train_files)
    assert {k: v for p in parts for k, v in p.items()} == train_files
    info = data.info
    assert info.class_names == list(LAYOUT_CLASSES)
    assert info.split_sizes == {role: len(got[role]) for role in SPLITS}
    folder = {role: folder_names.get(role, role) + "/" for role in given}
    assert info.split_origins == {
        role: folder.get(role, f"carved from train/ ({fraction:g} of each class)")
        for role in SPLITS
    }


def test_split_folders_with_different_classes_fail_naming_them(tmp_path):
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "emu"))):
        for name in classes:
            write_png(str(tmp_path / split / name / "0.png"), 1)
    with pytest.raises(ValueError, match=r"test/ lacks \['dog'\] and has \['emu'\]"):
        load_datasets(str(tmp_path))


@pytest.mark.parametrize(
    "folders, pattern",
    [
        (("train", "extra"), (r"mixes split sub-folders \['train'\] with other "
                              r"sub-folders \['extra'\]")),
        (("train", "val", "validation"), "has both val/ and validation/"),
        (("val", "test"), r"split sub-folders \['test', 'val'\] but no train/"),
    ],
)
def test_ambiguous_split_layouts_fail(tmp_path, folders, pattern):
    for split in folders:
        write_png(str(tmp_path / split / "cat" / "0.png"), 1)
    with pytest.raises(ValueError, match=pattern):
        load_datasets(str(tmp_path))


# --------------------------------------------------------------- bad image files


def corrupt_payloads():
    """name -> bytes of files TensorFlow cannot decode, each broken differently."""
    png, jpeg = encoded(noise(), "PNG"), encoded(noise(), "JPEG")
    return {
        "bad.png": np.random.default_rng(1).integers(0, 256, 300, np.uint8).tobytes(),
        "half.png": png[: len(png) // 2],
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpeg": b"",
    }


@pytest.fixture
def folder_with_bad_files(tmp_path):
    """3 classes x 6 good PNGs (ids 0..17) plus one broken file per payload.

    Returns:
        (root, {good id: label}, {relative path of each broken file}).
    """
    good = {}
    for label, name in enumerate(("cat", "dog", "emu")):
        for i in range(6):
            write_png(str(tmp_path / name / f"{i}.png"), 6 * label + i)
            good[6 * label + i] = label
    bad = set()
    for (name, payload), folder in zip(corrupt_payloads().items(), ("cat", "dog", "emu", "cat")):
        (tmp_path / folder / name).write_bytes(payload)
        bad.add(f"{folder}/{name}")
    return str(tmp_path), good, bad


def test_bad_files_fail_before_training_naming_each_file(folder_with_bad_files):
    root, good, bad = folder_with_bad_files
    with pytest.raises(ValueError) as raised:
        load_datasets(root)  # on_bad_image="error" is the default.
    message = str(raised.value)
    assert f"{len(bad)} of {len(good) + len(bad)} image files cannot be decoded" in message
    for path in bad:
        assert path in message
    assert "on_bad_image='skip'" in message


def test_many_bad_files_are_named_up_to_five_then_counted(tmp_path):
    for i in range(3):
        write_png(str(tmp_path / "cat" / f"good{i}.png"), i)
        write_png(str(tmp_path / "dog" / f"good{i}.png"), i)
    names = [f"junk{i}.png" for i in range(8)]
    for name in names:
        (tmp_path / "cat" / name).write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="and 3 more") as raised:
        load_datasets(str(tmp_path), on_bad_image="error")
    assert sum(f"cat/{name}" in str(raised.value) for name in names) == 5


def test_skip_leaves_bad_files_out_with_one_warning_listing_them(folder_with_bad_files, caplog):
    root, good, bad = folder_with_bad_files
    with caplog.at_level(logging.WARNING, logger="pipelines.data"):
        data = load_datasets(root, on_bad_image="skip", augment=False, batch_size=4)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "pipelines.data" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    listed = set(re.findall(r"(\w+/[\w.]+) \(", warnings[0]))
    assert listed == bad
    assert f"skipping {len(bad)} of {len(good) + len(bad)} image files" in warnings[0]
    assert set(data.info.skipped_files) == {os.path.join(root, path) for path in bad}
    seen = {}
    for role in SPLITS:  # Iterating every split decodes every kept file.
        images, labels = collect(getattr(data, role))
        seen.update(zip(flat_ids(images), labels.tolist()))
    assert seen == good and sum(data.info.split_sizes.values()) == len(good)


def test_skip_that_empties_a_class_fails(tmp_path):
    write_png(str(tmp_path / "cat" / "0.png"), 1)
    write_png(str(tmp_path / "cat" / "1.png"), 2)
    write_png(str(tmp_path / "cat" / "2.png"), 3)
    os.makedirs(tmp_path / "dog")
    (tmp_path / "dog" / "0.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"classes \['dog'\] of the train split have no images"):
        load_datasets(str(tmp_path), on_bad_image="skip")


@pytest.mark.parametrize("policy", BAD_IMAGE_POLICIES)
def test_every_policy_accepts_a_clean_folder(image_folder, policy):
    data = load_datasets(image_folder, on_bad_image=policy)
    assert data.info.skipped_files == () and data.info.num_train == 18


def with_thumbnail(jpeg):
    """`jpeg` with a complete JPEG thumbnail embedded in an APP1 segment after SOI."""
    thumbnail = encoded(noise((4, 4, 3), seed=5), "JPEG")
    payload = b"Exif\x00\x00" + thumbnail
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


def scan_cases():
    """name -> bytes: decodable files of every kind and broken ones."""
    rgb, grey = noise(), noise((12, 10), seed=2)
    png, jpeg = encoded(rgb, "PNG"), encoded(rgb, "JPEG")
    idat = png.index(b"IDAT") + 10
    palette = Image.fromarray(rgb).convert("P")
    palette_buffer = io.BytesIO()
    palette.save(palette_buffer, "PNG", transparency=0)
    cases = {
        "png_rgb": png, "png_grey": encoded(grey, "PNG"),
        "png_grey_alpha": encoded(np.stack([grey, grey], -1), "PNG", mode="LA"),
        "png_rgba": encoded(noise((12, 10, 4)), "PNG"),
        "png_16bit": encoded(grey.astype(np.uint16) * 257, "PNG"),
        "png_palette": palette_buffer.getvalue(),
        "jpeg": jpeg, "jpeg_grey": encoded(grey, "JPEG"),
        "jpeg_progressive": encoded(rgb, "JPEG", progressive=True),
        "jpeg_cmyk": encoded(np.concatenate([rgb, rgb[..., :1]], -1), "JPEG", mode="CMYK"),
        "jpeg_trailing_bytes": jpeg + b"trailing",
        "jpeg_thumbnail": with_thumbnail(jpeg),
        "gif": encoded(rgb, "GIF"), "bmp": encoded(rgb, "BMP"), "webp": encoded(rgb, "WEBP"),
        "png_without_iend": png[:-12],
        "png_flipped_byte": png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1:],
        "jpeg_without_eoi": jpeg[:-2],
        # Cut inside the main image's scan data: only the thumbnail's end marker is left.
        "jpeg_thumbnail_cut": with_thumbnail(encoded(noise((64, 48, 3)), "JPEG"))[:-500],
        "bmp_cut": encoded(rgb, "BMP")[:100],
    }
    return {**cases, **{f"corrupt_{k}": v for k, v in corrupt_payloads().items()}}


@pytest.mark.parametrize("name", sorted(scan_cases()))
def test_scan_agrees_with_tensorflow_decoding(tmp_path, name):
    """The cheap check accepts exactly what tf.io.decode_image decodes, with its shape."""
    payload = scan_cases()[name]
    path = tmp_path / "image.png"  # Folders only list image names; content decides.
    path.write_bytes(payload)
    try:
        expected = tuple(tf.io.decode_image(payload, expand_animations=False).shape)
    except tf.errors.InvalidArgumentError:
        expected = None
    try:
        header = read_header(str(path))
        got = (header.height, header.width, header.channels)
    except BadImageError:
        got = None
    assert got == expected


def test_progress_bar_only_for_many_files(tmp_path, capsys):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        write_png(paths[-1], i)
    headers, bad = scan_images(paths, progress_min_files=4)
    assert capsys.readouterr().err == "" and len(headers) == 3 and bad == []
    scan_images(paths, progress_min_files=3)
    err = capsys.readouterr().err
    assert "checking images" in err and "3/3" in err


# ---------------------------------------------------------------- conversions


def test_conversions_are_reported_in_one_line(tmp_path, caplog):
    """Mixed grey / RGBA / other-size files decode to the majority size in RGB."""
    files = {
        "a/rgb0.png": np.full((12, 10, 3), (10, 20, 30), np.uint8),
        "a/rgb1.png": np.full((12, 10, 3), (40, 50, 60), np.uint8),
        "a/rgb2.png": np.full((12, 10, 3), (70, 80, 90), np.uint8),
        "a/grey.png": np.full((12, 10), 100, np.uint8),
        "b/rgb3.png": np.full((12, 10, 3), (110, 120, 130), np.uint8),
        "b/rgb4.png": np.full((12, 10, 3), (140, 150, 160), np.uint8),
        "b/rgba.png": np.full((12, 10, 4), (170, 180, 190, 7), np.uint8),
        "b/big0.png": np.full((24, 20, 3), (200, 210, 220), np.uint8),
        "b/big1.png": np.full((24, 20, 3), (230, 240, 250), np.uint8),
    }
    for relative, pixels in files.items():
        os.makedirs(tmp_path / os.path.dirname(relative), exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / relative)
    with caplog.at_level(logging.INFO, logger="pipelines.data"):
        data = load_datasets(str(tmp_path), augment=False, validation_fraction=0.2)
    name = os.path.basename(tmp_path)
    assert data.info.image_shape == (12, 10, 3)
    assert data.info.conversions == (
        f"{name}: 4 of 9 images converted to 12x10 RGB: 2 resized (from 24x20: 2); "
        "1 RGBA->RGB; 1 grey->RGB"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "pipelines.data"] == [
        data.info.conversions]
    # Pixels: what Pillow's own conversion to RGB gives (grey replicated, alpha dropped).
    expected = sorted(tuple(np.asarray(Image.open(tmp_path / r).convert("RGB"))[0, 0])
                      for r in files)
    got = []
    for role in SPLITS:
        images, _ = collect(getattr(data, role))
        got += [tuple(np.round(image.mean(axis=(0, 1))).astype(int)) for image in images]
    assert sorted(got) == expected


def test_folder_of_one_shape_reports_no_conversion(image_folder):
    assert load_datasets(image_folder).info.conversions == ""


@pytest.mark.slow
def test_choice_lists_import_without_tensorflow():
    """CLI parsers read the choice lists without paying for a TensorFlow import."""
    code = ("import sys, pipelines.data as d; "
            "print(d.AUGMENTATIONS, d.BAD_IMAGE_POLICIES, len(d.describe_sources()) > 0, "
            "'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert result.stdout.split()[-1] == "False"
    assert "'error', 'skip'" in result.stdout and "'crop_flip'" in result.stdout


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_one_channel_decode_of_every_format_is_the_files_grey(fmt, mode):
    """`decode_pixels(..., 1)` reads each format (TF's GIF, BMP and WebP decoders alone
    cannot give one channel) as grey: PIL's own conversion within one level (the
    luma weights differ in the 4th digit); exact for grey files."""
    import io

    from pipelines.data.images import decode_pixels

    rng = np.random.default_rng(3)
    shape = (6, 5) if mode == "L" else (6, 5, 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    if fmt == "JPEG":  # lossy: a flat image survives it
        pixels = np.full(shape, 77, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=fmt, lossless=True)
    payload = buffer.getvalue()
    grey = np.asarray(Image.open(io.BytesIO(payload)).convert("L"), np.int32)
    got = decode_pixels(tf.constant(payload), 1).numpy().astype(np.int32)
    assert got.shape == (6, 5, 1)
    tolerance = 0 if mode == "L" and fmt != "JPEG" else 1
    assert np.abs(got[..., 0] - grey).max() <= tolerance


@pytest.mark.parametrize("file_size", [(12, 10), (6, 5)])
def test_one_size_folder_decodes_in_batches_like_decode_image(tmp_path, file_size):
    """The one-size fast path (batched read, decode and resize) gives `decode_image`'s pixels.

    Files of 12x10 are resized to 6x5 in batches, files of 6x5 only decoded;
    each image of every split must equal, bit for bit, `decode_image` of one
    file of its class, and every file must appear once.
    """
    import tensorflow as tf

    from pipelines.data.folder import DECODE_BATCH, folder_splits
    from pipelines.data.images import decode_image

    rng = np.random.default_rng(0)
    reference = []
    for index in range(DECODE_BATCH + 5):  # a full decode batch and a partial one
        folder = tmp_path / f"class_{index % 2}"
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (*file_size, 3), dtype=np.uint8)
        path = str(folder / f"{index:03d}.png")
        tf.io.write_file(path, tf.io.encode_png(pixels))
        reference.append((index % 2, decode_image(tf.io.read_file(path), (6, 5, 3)).numpy()))
    splits = folder_splits(str(tmp_path), (6, 5), 0.1, 0, "error")
    # Known sizes: the training job counts its steps per epoch from them.
    assert sum(int(getattr(splits, role).cardinality())
               for role in ("train", "validation", "test")) == len(reference)
    unmatched = list(reference)
    for role in ("train", "validation", "test"):
        for image, label in getattr(splits, role):
            assert image.shape == (6, 5, 3) and image.dtype == tf.float32
            match = [i for i, (lab, ref) in enumerate(unmatched)
                     if lab == int(label) and np.array_equal(ref, image.numpy())]
            assert len(match) == 1, role
            unmatched.pop(match[0])
    assert not unmatched


def epochs_of_ids(dataset, epochs):
    """File ids of each epoch of a batched dataset, in the order they come, and batch sizes."""
    iterator = iter(dataset.repeat())
    batches = dataset.cardinality().numpy()
    ids, sizes = [], set()
    for _ in range(epochs):
        epoch = [next(iterator) for _ in range(batches)]
        sizes |= {int(images.shape[0]) for images, _ in epoch}
        ids.append([i for images, _ in epoch for i in file_ids(images.numpy())])
    return ids, sizes


def test_uncached_training_split_shuffles_file_names_every_epoch(image_folder):
    """Not cached: each epoch decodes every training file once, in a new seeded order.

    The file names are shuffled before decoding, all at once (even with
    `shuffle_buffer=1`, which bounds decoded images only: with the cache the
    order is then the file order), and batched before decoding; labels follow
    the files.
    """
    def load(seed, cache=False, **kwargs):
        return load_datasets(image_folder, batch_size=4, augment=False, cache=cache, seed=seed,
                             deterministic=True, shuffle_buffer=1, **kwargs)

    cached_ids = file_ids(collect(load(0, cache=True).train)[0])
    assert cached_ids == sorted(cached_ids)  # buffer 1: no shuffle of decoded images
    epochs, sizes = epochs_of_ids(load(0).train, 3)
    assert all(sorted(epoch) == cached_ids for epoch in epochs)  # 18 files, once each
    assert len({tuple(epoch) for epoch in epochs}) == 3 and epochs[0] != cached_ids
    assert sizes == {4, 2}
    assert epochs_of_ids(load(0).train, 3)[0] == epochs  # seeded
    assert epochs_of_ids(load(1).train, 1)[0][0] != epochs[0]
    dropped, sizes = epochs_of_ids(load(0, drop_remainder=True).train, 2)
    assert sizes == {4} and all(len(set(epoch)) == 16 for epoch in dropped)
    for images, labels in load(0).train:
        assert [i // 10 for i in file_ids(images.numpy())] == labels.numpy().tolist()


def test_uncached_training_on_train_and_validation_shuffles_both(image_folder):
    """`--fit-on train+validation` without a cache: the two splits' files shuffled together."""
    from pipelines.data.loading import batch_splits, read_source
    from pipelines.training.data_loading import fit_splits

    splits = read_source(image_folder, image_size=None, data_dir=None, offline=True,
                         validation_fraction=0.2, seed=0, on_bad_image="error")
    expected = sorted(file_ids(collect(load_datasets(image_folder, augment=False).train)[0])
                      + file_ids(collect(load_datasets(image_folder).validation)[0]))
    train = batch_splits(fit_splits(splits, "train+validation"), batch_size=5, augment=False,
                         cache=False, deterministic=True).train
    (first, second), _ = epochs_of_ids(train, 2)
    assert sorted(first) == sorted(second) == expected and first != second
    assert first[:18] != sorted(first[:18])  # not train's files, then validation's


def test_uncached_mixed_size_folder_decodes_batches_like_decode_image(tmp_path):
    """Files of two sizes, decoded in training batches: `decode_image`'s pixels, file by file."""
    from pipelines.data.images import decode_image

    rng = np.random.default_rng(3)
    reference = {}
    for index in range(12):
        folder = tmp_path / f"class_{index % 2}"
        folder.mkdir(exist_ok=True)
        size = (12, 10) if index % 3 else (7, 9)
        path = str(folder / f"{index:02d}.png")
        tf.io.write_file(path, tf.io.encode_png(rng.integers(0, 256, (*size, 3), np.uint8)))
        reference[path] = decode_image(tf.io.read_file(path), (12, 10, 3)).numpy()
    data = load_datasets(str(tmp_path), batch_size=3, augment=False, cache=False,
                         validation_fraction=0.1)
    images, labels = collect(data.train)
    assert len(images) == data.info.num_train == 8
    unmatched = list(reference.items())
    for image, label in zip(images, labels):
        match = [i for i, (path, ref) in enumerate(unmatched)
                 if np.array_equal(ref, image) and f"class_{label}" in path]
        assert len(match) == 1
        unmatched.pop(match[0])


# ------------------------------------------------------------ resize_pixels


@pytest.mark.parametrize("source, target", [((20, 17), (12, 12)), ((24, 36), (12, 12))])
def test_resize_pixels_shrinks_by_area(source, target):
    from pipelines.data.images import resize_pixels

    pixels = np.random.default_rng(0).integers(0, 256, (*source, 3)).astype(np.uint8)
    got = resize_pixels(pixels, target).numpy()
    np.testing.assert_allclose(
        got, tf.image.resize(pixels.astype(np.float32), target, method="area").numpy(), atol=1e-4)
    if source == (24, 36):  # whole factors 2 and 3: each output pixel is a block's mean
        blocks = pixels.astype(np.float64).reshape(12, 2, 12, 3, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(got, blocks, atol=1e-3)


@pytest.mark.parametrize("source, target", [((7, 9), (12, 12)), ((12, 5), (12, 12)),
                                            ((12, 30), (20, 12))])
def test_resize_pixels_equals_antialiased_bilinear_when_any_side_grows(source, target):
    # Enlarging: plain bilinear, which is what antialiased bilinear computes then;
    # one side shrinking: antialiased bilinear itself.
    from pipelines.data.images import resize_pixels

    pixels = np.random.default_rng(1).integers(0, 256, (2, *source, 1)).astype(np.uint8)
    expected = tf.image.resize(pixels.astype(np.float32), target, method="bilinear",
                               antialias=True).numpy()
    np.testing.assert_allclose(resize_pixels(pixels, target).numpy(), expected, atol=1e-4)
