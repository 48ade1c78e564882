"""`keras-vit prepare` and the TFRecord reader: same examples as the source,
file-level sharding, damaged files named, nothing half-written."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipelines import prepare, records
from pipelines.data import load_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 7 random 8x6 RGB PNGs (and one JPEG, another size)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog", "fox"]):
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


def test_prepare_tfds_digits_gives_the_same_examples(digits_data_dir, tmp_path):
    out = tmp_path / "digits"
    metadata = prepared("digits", out, "--shards", 3, "--data-dir", digits_data_dir, "--offline")
    assert [metadata["splits"][s]["count"] for s in records.SPLITS] == [1149, 288, 360]
    reference = load_datasets("digits", batch_size=64, data_dir=digits_data_dir, augment=False,
                              cache=False)
    data = records.tfrecord_datasets(out, batch_size=64)
    assert examples(data.test) == examples(reference.test)
    assert sum(examples(data.train).values()) == 1149


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
def test_keras_vit_prepare_then_train_from_records(digits_data_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "records"
    for command in (
            ["pipelines.cli", "prepare", "digits", str(out), "--shards", "2",
             "--data-dir", digits_data_dir, "--offline"],
            ["pipelines.distributed.demo", "--run-dir", str(tmp_path / "run"), "--dataset",
             f"tfrecord:{out}", "--epochs", "1", "--batch-size", "32",
             "--steps-per-epoch", "5"]):
        done = subprocess.run([sys.executable, "-m", *command], check=False, env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    history = json.loads((tmp_path / "run" / "result.json").read_text())["history"]
    assert history["epoch"] == [0] and np.isfinite(history["loss"][0])
