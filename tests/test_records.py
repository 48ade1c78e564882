"""`keras-vit prepare` and the TFRecord reader: same examples as the source,
file-level sharding, damaged files named, nothing half-written."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import prepare, records
from pipelines.data import load_datasets


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 7 random 8x6 RGB PNGs (and one JPEG, another size)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for _label, name in enumerate(["cat", "dog", "fox"]):
        os.makedirs(root / name)
        for index in range(7):
            pixels = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
            tf.io.write_file(str(root / name / f"{index}.png"), tf.io.encode_png(pixels))
    big = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    tf.io.write_file(str(root / "dog" / "big.jpg"), tf.io.encode_jpeg(big))
    return str(root)


def examples(dataset):
    """Multiset of (label, image bytes) of a batched (images, labels) dataset."""
    found = collections.Counter()
    for images, labels in dataset:
        for image, label in zip(images.numpy(), labels.numpy()):
            found[(int(label), image.astype(np.float32).tobytes())] += 1
    return found


def prepared(source, out, *args):
    code = prepare.main([str(source), str(out), *map(str, args)])
    assert code == 0
    return records.read_metadata(out)


def test_prepare_folder_gives_the_folders_examples(image_folder, tmp_path, capsys):
    out = tmp_path / "records"
    metadata = prepared(image_folder, out, "--shards", 2, "--validation-fraction", 0.3,
                        "--seed", 5, "--image-size", "8,6")
    assert "wrote" in capsys.readouterr().out
    reference = load_datasets(image_folder, batch_size=4, augment=False, cache=False,
                              validation_fraction=0.3, seed=5, image_size=(8, 6))
    assert metadata["class_names"] == ["cat", "dog", "fox"] == reference.info.class_names
    assert tuple(metadata["image_shape"]) == reference.info.image_shape == (8, 6, 3)
    counts = {split: metadata["splits"][split]["count"] for split in records.SPLITS}
    assert counts == {"train": reference.info.num_train,
                      "validation": reference.info.num_validation,
                      "test": reference.info.num_test}
    assert sorted(os.listdir(out)) == sorted(
        ["metadata.json"] + [records.shard_name(s, i, 2) for s in records.SPLITS for i in (0, 1)])
    data = records.tfrecord_datasets(out, batch_size=4, seed=1)
    assert data.info == reference.info
    for split in records.SPLITS:
        assert examples(getattr(data, split)) == examples(getattr(reference, split)), split
    images, labels = next(iter(data.train))
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    assert int(data.train.cardinality()) == int(np.ceil(counts["train"] / 4))
    assert data.train.options().autotune.enabled is False  # stages.training_options


def test_prepare_tfds_digits_gives_the_same_examples(digits_data_dir, tmp_path):
    out = tmp_path / "digits"
    metadata = prepared("digits", out, "--shards", 3, "--data-dir", digits_data_dir, "--offline")
    assert [metadata["splits"][s]["count"] for s in records.SPLITS] == [1149, 288, 360]
    reference = load_datasets("digits", batch_size=64, data_dir=digits_data_dir, augment=False,
                              cache=False)
    data = records.tfrecord_datasets(out, batch_size=64)
    assert examples(data.test) == examples(reference.test)
    assert sum(examples(data.train).values()) == 1149


def test_prepare_split_folders_with_a_bad_image(tmp_path):
    """train/ and test/ split folders (validation carved from train), one undecodable
    file: refused by default, left out with --on-bad-image skip, as load_datasets does."""
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for split, count in (("train", 5), ("test", 2)):
        for name in ("ant", "bee"):
            os.makedirs(root / split / name)
            for index in range(count):
                pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                tf.io.write_file(str(root / split / name / f"{index}.png"),
                                 tf.io.encode_png(pixels))
    (root / "train" / "bee" / "broken.png").write_bytes(b"not a png")
    assert prepare.main([str(root), str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    metadata = prepared(root, tmp_path / "out", "--on-bad-image", "skip", "--shards", 2)
    reference = load_datasets(str(root), batch_size=4, augment=False, cache=False,
                              on_bad_image="skip")
    assert metadata["skipped_files"] == [str(root / "train" / "bee" / "broken.png")]
    data = records.tfrecord_datasets(tmp_path / "out", batch_size=4)
    assert data.info == reference.info
    assert data.info.split_origins["test"] == "test/"
    for split in records.SPLITS:
        assert examples(getattr(data, split)) == examples(getattr(reference, split)), split


def test_file_level_sharding_splits_the_files(image_folder, tmp_path):
    out = tmp_path / "records"
    metadata = prepared(image_folder, out, "--shards", 3)
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                           num_replicas_in_sync=2) for i in (0, 1)]
    parts = [examples(records.tfrecord_datasets(out, batch_size=2, input_context=c).train)
             for c in contexts]
    everything = examples(records.tfrecord_datasets(out, batch_size=2).train)
    assert not set(parts[0]) & set(parts[1])
    assert parts[0] + parts[1] == everything
    files = metadata["splits"]["train"]["files"]
    sizes = [files[0]["records"] + files[2]["records"], files[1]["records"]]
    assert [sum(p.values()) for p in parts] == sizes
    assert records.min_steps_per_epoch(metadata, "train", 2, 2) == min(sizes) // 2
    with pytest.raises(ValueError, match="3 file\\(s\\) for 4 input pipelines"):
        records.split_records(out, "train", input_context=tf.distribute.InputContext(4, 0, 4))


def test_truncated_and_corrupt_files_are_named(image_folder, tmp_path):
    out = tmp_path / "records"
    prepared(image_folder, out, "--shards", 2)
    victim = out / records.shard_name("train", 1, 2)
    data = victim.read_bytes()
    victim.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=f"{victim}.* truncated or damaged"):
        records.tfrecord_datasets(out, batch_size=4)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # same size, a record's CRC no longer matches
    victim.write_bytes(bytes(damaged))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"corrupt or truncated.*{victim}"):
        examples(records.tfrecord_datasets(out, batch_size=4).train)


def test_prepare_refuses_bad_arguments_and_writes_nothing(image_folder, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert prepare.main([image_folder, str(busy)]) == 2
    assert f"output folder '{busy}' exists and is not empty" in capsys.readouterr().err
    assert os.listdir(busy) == ["keep.txt"]
    assert prepare.main([image_folder, str(tmp_path / "new"), "--shards", "0"]) == 2
    assert "--shards 0" in capsys.readouterr().err
    assert prepare.main([str(tmp_path / "missing"), str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()
    with pytest.raises(ValueError, match="holds no metadata.json"):
        records.read_metadata(tmp_path)


@pytest.mark.slow
def test_keras_vit_prepare_then_train_from_records(digits_data_dir, tmp_path, capsys):
    """`keras-vit prepare`, then `keras-vit train --dataset OUT` (a prepared folder is
    recognised without the tfrecord: prefix) for one epoch, evaluation and export."""
    import keras

    from pipelines.cli import main as keras_vit

    out, run_dir = tmp_path / "records", tmp_path / "run"
    assert keras_vit(["prepare", "digits", str(out), "--shards", "2", "--data-dir",
                      digits_data_dir, "--offline"]) == 0
    policy = keras.config.dtype_policy()
    try:
        code = keras_vit(["train", "--dataset", str(out), "--epochs", "1", "--batch-size", "64",
                          "--variant", "Ti/2", "--hidden-dim", "16", "--depth", "1",
                          "--num-heads", "2", "--mlp-dim", "32", "--precision", "float32",
                          "--no-verify-export", "--verbose", "0", "--output-dir", str(run_dir),
                          "--export-dir", str(tmp_path / "export")])
    finally:
        keras.config.set_dtype_policy(policy)
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    assert "SVC baseline skipped" in printed
    assert "17 steps per epoch of 64 images" in printed  # 1149 // 64: one input pipeline
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [0] and np.isfinite(history["loss"][0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "uci_digits" and metrics["replicas"] == 1
    assert (tmp_path / "export" / "vit_records" / "1" / "saved_model.pb").exists()


def _metadata_of(out):
    return json.loads((out / records.METADATA).read_text())


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.pop("class_names"),
     "field 'class_names' is missing: expected a non-empty list of distinct class-name strings"),
    (lambda m: m.update(class_names=["cat", "cat", "fox"]),
     "field 'class_names' is ['cat', 'cat', 'fox']: expected a non-empty list of distinct"),
    (lambda m: m.update(class_names=[]), "field 'class_names' is []: expected a non-empty"),
    (lambda m: m.update(image_shape="abc"),
     "field 'image_shape' is 'abc': expected [height, width, channels] positive integers"),
    (lambda m: m.update(image_shape=[8, 0, 3]), "field 'image_shape' is [8, 0, 3]: expected"),
    (lambda m: m.update(image_shape=[8, 6]), "field 'image_shape' is [8, 6]: expected"),
    (lambda m: m.pop("name"), "field 'name' is missing: expected the dataset name"),
    (lambda m: m.pop("splits"), "field 'splits' is missing: expected an object with the splits"),
    (lambda m: m["splits"].pop("test"), "field 'splits.test' is missing: expected an object"),
    (lambda m: m["splits"]["train"].update(count=-1),
     "field 'splits.train.count' is -1: expected a non-negative integer"),
    (lambda m: m["splits"]["train"].update(count="17"),
     "field 'splits.train.count' is '17': expected a non-negative integer"),
    (lambda m: m["splits"]["train"].update(count=5),
     "field 'splits.train.count' is 5, but its files hold"),
    (lambda m: m["splits"]["validation"].update(files="all"),
     "field 'splits.validation.files' is 'all': expected a list of"),
    (lambda m: m["splits"]["test"]["files"][0].pop("bytes"),
     "field splits.test.files[0] is {"),
    (lambda m: m["splits"]["test"]["files"][0].update(name="../../etc/passwd"),
     "field splits.test.files[0] is {"),
    (lambda m: m.update(skipped_files="none"), "field 'skipped_files' is 'none': expected a list"),
])
def test_bad_metadata_fields_are_one_line_naming_file_and_field(image_folder, tmp_path, capsys,
                                                                 change, needle):
    """A hand-edited or foreign metadata.json: one ValueError naming the file and the
    field (was a KeyError or TypeError traceback), from the reader and `keras-vit train`."""
    out = tmp_path / "records"
    prepared(image_folder, out, "--shards", 2)
    metadata = _metadata_of(out)
    change(metadata)
    (out / records.METADATA).write_text(json.dumps(metadata))
    path = str(out / records.METADATA)
    with pytest.raises(ValueError) as raised:
        records.tfrecord_datasets(out, batch_size=4)
    message = str(raised.value)
    assert message.startswith(f"{path!r}: ") and needle in message, message
    assert "\n" not in message


def test_metadata_that_is_not_an_object_or_not_json(image_folder, tmp_path):
    out = tmp_path / "records"
    prepared(image_folder, out, "--shards", 1)
    (out / records.METADATA).write_text("[1, 2]")
    with pytest.raises(ValueError, match="metadata.json': expected a JSON object, found list"):
        records.read_metadata(out)
    (out / records.METADATA).write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="metadata.json' is not valid JSON"):
        records.read_metadata(out)


def test_records_path_that_is_missing_or_a_file(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"records folder '{missing}' does not exist: expected "
                                         "a folder written by `keras-vit prepare"):
        records.read_metadata(missing)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=f"records folder '{afile}' is a file, not a folder"):
        records.read_metadata(afile)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def run_train(argv, capsys):
    """`keras-vit train` in this process: (exit code, stderr lines)."""
    from pipelines.train import main

    code = main(argv)
    return code, capsys.readouterr().err.splitlines()


TINY = ["--variant", "Ti/2", "--hidden-dim", "16", "--depth", "1", "--num-heads", "2",
        "--mlp-dim", "32", "--precision", "float32", "--verbose", "0", "--epochs", "1",
        "--no-baseline", "--no-export"]


def test_train_from_a_records_folder_without_metadata(image_folder, tmp_path, capsys):
    """A prepared folder that lost its metadata.json is named as such (was: "image
    folder ... has no class sub-folders"); a missing tfrecord: path "does not exist"."""
    out = tmp_path / "records"
    prepared(image_folder, out, "--shards", 2)
    (out / records.METADATA).unlink()
    before = sorted(os.listdir(out))
    code, err = run_train(["--dataset", str(out), "--output-dir", str(tmp_path / "run"), *TINY],
                          capsys)
    errors = [line for line in err if line.startswith("keras-vit train: error: ")]
    assert code == 2 and len(errors) == 1, err
    assert (f"folder '{out}' holds *.tfrecord files but no metadata.json: it looks like a "
            "`keras-vit prepare` output folder missing its metadata.json") in errors[0]
    assert "no class sub-folders" not in errors[0]
    missing = tmp_path / "nope"
    code, err = run_train(["--dataset", f"tfrecord:{missing}", "--output-dir",
                           str(tmp_path / "run"), *TINY], capsys)
    errors = [line for line in err if line.startswith("keras-vit train: error: ")]
    assert code == 2 and len(errors) == 1, err
    assert f"records folder '{missing}' does not exist" in errors[0]
    assert sorted(os.listdir(out)) == before and not (tmp_path / "run").exists()


def test_prepare_into_a_file_or_with_more_shards_than_images(image_folder, tmp_path, capsys):
    afile = tmp_path / "out.txt"
    afile.write_text("keep")
    assert prepare.main([image_folder, str(afile)]) == 2
    err = capsys.readouterr().err
    assert (f"keras-vit prepare: error: output folder '{afile}' is a file, not a folder"
            in err and "not empty" not in err), err
    assert afile.read_text() == "keep"
    under_file = afile / "out"
    assert prepare.main([image_folder, str(under_file)]) == 2
    assert f"'{afile}' is a file, not a folder" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]

    out = tmp_path / "many"
    metadata = prepared(image_folder, out, "--shards", 100)
    printed = capsys.readouterr().out
    files = {split: len(metadata["splits"][split]["files"]) for split in records.SPLITS}
    assert all(n < 100 for n in files.values())
    written = ", ".join(f"{split} {n}" for split, n in files.items())
    assert f"note: --shards 100, but files written per split: {written}" in printed, printed
    assert len(os.listdir(out)) == 1 + sum(files.values())
    prepared(image_folder, tmp_path / "few", "--shards", 2)
    assert "note:" not in capsys.readouterr().out
