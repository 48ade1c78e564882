"""The sequence task's data side: vocabulary, scores, sources, pipelines and bad input.

References are independent: hand-written token rows, a recursive edit
distance, `ops.slice_update`, and the files the tests write themselves.
"""

import functools
import io
import json
import pathlib
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image
from sequence_fixtures import (  # noqa: F401  (digit_strings_data_dir: a fixture)
    as_letters,
    digit_strings_data_dir,
    rewrite_label,
    write_folder_dataset,
    write_split,
)

from pipelines.sequence.metrics import (
    character_error_rate,
    edit_distance,
    exact_match_accuracy,
)
from pipelines.sequence.vocab import END, PAD, START, CharVocabulary

# ------------------------------------------------------------------- vocabulary


def test_vocabulary_ids_follow_pad_start_end_then_sorted_characters():
    vocab = CharVocabulary.from_texts(["ba", "c", "ab"])
    assert (PAD, START, END) == (0, 1, 2)
    assert vocab.characters == ("a", "b", "c") and vocab.size == 6
    np.testing.assert_array_equal(vocab.encode("cab", 6), [5, 3, 4, END, PAD, PAD])
    assert vocab.decode([5, 3, 4, END, 5, 5]) == "cab"  # stops at the end token
    assert vocab.decode([START, 3, PAD, 4]) == "ab"  # specials read as nothing


def test_vocabulary_round_trips_through_vocab_json(tmp_path):
    vocab = CharVocabulary.from_texts(["äb", "1 2"])
    loaded = CharVocabulary.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded == vocab
    data = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert data["characters"] == [" ", "1", "2", "b", "ä"]
    assert (data["pad_id"], data["start_id"], data["end_id"]) == (PAD, START, END)


@pytest.mark.parametrize("text, max_length, needle", [
    ("", 5, "empty label"),
    ("abx", 5, "characters ['x']"),
    ("abab", 4, "has 4 characters; max_length=4 allows at most 3"),
])
def test_vocabulary_encode_names_the_bad_text(text, max_length, needle):
    vocab = CharVocabulary.from_texts(["ab"])
    with pytest.raises(ValueError, match="labels.csv line 7") as error:
        vocab.encode(text, max_length, where="labels.csv line 7")
    assert needle in str(error.value)


# ------------------------------------------------------------------ scores


@functools.cache
def _recursive_distance(a, b):
    if not a or not b:
        return len(a) + len(b)
    return min(_recursive_distance(a[1:], b) + 1, _recursive_distance(a, b[1:]) + 1,
               _recursive_distance(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_matches_a_recursive_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("012"), rng.integers(0, 7)))
        b = "".join(rng.choice(list("012"), rng.integers(0, 7)))
        assert edit_distance(a, b) == _recursive_distance(a, b), (a, b)


def test_cer_and_exact_accuracy_on_hand_counted_examples():
    references, hypotheses = ["4071", "12", "9"], ["471", "12", "98"]
    # One deletion, nothing, one insertion: 2 edits over 7 reference characters.
    assert character_error_rate(references, hypotheses) == pytest.approx(2 / 7)
    assert exact_match_accuracy(references, hypotheses) == pytest.approx(1 / 3)


# ------------------------------------------------------------------- write_slice


def test_write_slice_equals_slice_update():
    from keras import ops

    from keras_vit.layers.updates import write_slice

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6, 2)).astype("float32")
    updates = rng.normal(size=(2, 3, 2, 2)).astype("float32")
    for start in range(5):
        expected = np.array(x)
        expected[:, :, start:start + 2] = updates
        got = ops.convert_to_numpy(write_slice(x, start, updates, axis=2))
        np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------- folder source


def test_folder_with_split_folders_reads_every_split_and_builds_the_vocabulary(tmp_path):
    from pipelines.sequence.data import load_sequence_data

    written = write_folder_dataset(tmp_path / "plates", sizes=(20, 6, 5))
    data = load_sequence_data(str(tmp_path / "plates"), batch_size=4, max_length=8)
    train_texts = [text for _, text in written["train"]]
    assert data.info.vocab.characters == tuple(sorted(set("".join(train_texts))))
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (20, 6, 5)
    assert data.test_texts == [text for _, text in written["test"]]
    first = np.asarray(Image.open(tmp_path / "plates" / "test" / written["test"][0][0]))
    np.testing.assert_array_equal(data.test_images[0, :, :, 0], first)
    (images, decoder_tokens), targets, weights = next(iter(data.train))
    assert images.shape == (4, 16, 64, 1) and targets.shape == (4, 8, data.info.vocab.size)
    ids = np.argmax(targets.numpy(), axis=-1)
    np.testing.assert_array_equal(decoder_tokens.numpy()[:, 0], START)
    np.testing.assert_array_equal(decoder_tokens.numpy()[:, 1:], ids[:, :-1])
    np.testing.assert_array_equal(weights.numpy(), ids != PAD)
    texts = {data.info.vocab.decode(row) for row in ids}
    assert texts <= set(train_texts)


def test_folder_with_a_val_folder_uses_it_as_the_validation_split(tmp_path):
    from pipelines.sequence.sources import read_folder

    written = write_folder_dataset(tmp_path / "plates", sizes=(20, 6, 5))
    (tmp_path / "plates" / "validation").rename(tmp_path / "plates" / "val")
    raw = read_folder(str(tmp_path / "plates"), None, seed=0)
    assert {role: len(split) for role, split in raw.splits.items()} == {
        "train": 20, "validation": 6, "test": 5}
    validation = raw.splits["validation"]
    assert [pathlib.Path(p).parent.name for p in validation.paths] == ["val"] * 6
    assert sorted(zip((pathlib.Path(p).name for p in validation.paths), validation.texts)) == \
        sorted(written["validation"])


def test_single_labels_csv_carves_validation_and_test(tmp_path):
    from pipelines.sequence.sources import read_folder

    written = write_split(tmp_path / "one", "train", 30)
    raw = read_folder(str(tmp_path / "one"), None, seed=0)
    sizes = {role: len(split) for role, split in raw.splits.items()}
    assert sizes == {"train": 24, "validation": 3, "test": 3}
    names = [n for split in raw.splits.values() for n in split.paths]
    assert sorted(pathlib.Path(n).name for n in names) == sorted(n for n, _ in written)
    assert raw.origins["test"].startswith("carved from labels.csv")


def test_labels_csv_with_a_utf8_byte_order_mark_reads_like_the_plain_one(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a BOM; it is no part of the header."""
    from pipelines.sequence.sources import read_labels_csv

    written = write_split(tmp_path / "plain", "train", 4)
    plain = read_labels_csv(str(tmp_path / "plain" / "labels.csv"))
    csv_path = tmp_path / "plain" / "labels.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    with_bom = read_labels_csv(str(csv_path))
    assert with_bom == plain
    assert with_bom.texts == [text for _, text in written]


def test_labels_csv_names_may_use_sub_folders_but_not_leave_the_folder(tmp_path):
    from pipelines.sequence.sources import read_labels_csv

    write_split(tmp_path / "plates" / "scans", "train", 2)
    csv_path = tmp_path / "plates" / "labels.csv"
    csv_path.write_text("filename,text\nscans/train_000.png,ab\n./scans/train_001.png,c\n")
    split = read_labels_csv(str(csv_path))
    assert [pathlib.Path(p).name for p in split.paths] == ["train_000.png", "train_001.png"]
    for name in ("scans/../../plates/scans/train_000.png", "..", "/etc/hostname"):
        csv_path.write_text(f"filename,text\nscans/train_000.png,ab\n{name},c\n")
        with pytest.raises(ValueError, match=f"labels.csv line 3: image name '{name}' is outside"):
            read_labels_csv(str(csv_path))


def test_an_image_listed_twice_in_labels_csv_is_refused_naming_both_lines(tmp_path):
    """One file with two labels (carved, it could land in two splits) is refused, however
    its name is spelled."""
    from pipelines.sequence.sources import read_folder

    written = write_split(tmp_path / "one", "train", 10)
    csv_path = tmp_path / "one" / "labels.csv"
    plain = csv_path.read_text()
    csv_path.write_text(plain + f"{written[0][0]},bbb\n")
    with pytest.raises(ValueError, match=r"labels.csv lines 2 and 12 both list image "
                                         r"'train_000.png'; expected each image once"):
        read_folder(str(tmp_path / "one"), None, seed=0)
    csv_path.write_text(plain + f"./{written[3][0]},bbb\n")
    with pytest.raises(ValueError, match=r"lines 5 and 12 both list image './train_003.png' "
                                         r"\(as 'train_003.png' on line 5\)"):
        read_folder(str(tmp_path / "one"), None, seed=0)


def test_tfds_digit_strings_reads_every_split(digit_strings_data_dir):  # noqa: F811
    from pipelines.data.digit_strings import generate_strings
    from pipelines.sequence.data import load_sequence_data

    data = load_sequence_data("digit_strings/small", batch_size=50, max_length=6,
                              data_dir=digit_strings_data_dir, offline=True)
    assert data.info.vocab.characters == tuple("0123456789")
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (2000, 500,
                                                                                    500)
    expected = list(generate_strings("test", 3))
    assert data.test_texts[:3] == [e["label"] for e in expected]
    np.testing.assert_array_equal(data.test_images[0], expected[0]["image"])


# ------------------------------------------------------------------- bad input, CLI


def run_train(argv):
    from pipelines.training.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _corrupt(root, split, index, data):
    name = sorted((root / split).glob("*.png"))[index]
    name.write_bytes(data)
    return name.name


def _resize(root, split, index):
    path = sorted((root / split).glob("*.png"))[index]
    Image.fromarray(np.zeros((20, 64), np.uint8), mode="L").save(path)
    return path.name


def _rename_row(root, split, line, name):
    """Writes file name `name` on `line` (1-based, header = line 1) of ROOT/split/labels.csv."""
    path = root / split / "labels.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    rows[line - 1][0] = name(root) if callable(name) else name
    path.write_text("".join(",".join(row) + "\n" for row in rows))
    return rows[line - 1][0]


def _link_to_train_002(root):
    """validation/v.png: a link to train/train_002.png; returns its name."""
    (root / "validation" / "v.png").symlink_to(root / "train" / "train_002.png")
    return "v.png"


BAD_CASES = {
    "unknown character in test": (
        lambda root: rewrite_label(root, "test", 3, "abz"),
        ["test/labels.csv line 3", "characters ['z']"]),
    "unknown character in validation": (
        lambda root: rewrite_label(root, "validation", 2, "a#"),
        ["validation/labels.csv line 2", "characters ['#']"]),
    "empty label": (
        lambda root: rewrite_label(root, "train", 5, ""),
        ["train/labels.csv line 5", "empty label"]),
    "too long": (
        lambda root: rewrite_label(root, "train", 4, "abcdefghij"),
        ["train/labels.csv line 4", "'abcdefghij' has 10 characters, the most of any label",
         "--max-length is 8, which allows at most 7", "raise --max-length to 11 or more"]),
    "absolute file name": (
        lambda root: _rename_row(root, "test", 3, lambda r: str(r / "test" / "test_001.png")),
        ["test/labels.csv line 3: image name '/", "test_001.png' is outside",
         "expected a name relative to the labels.csv folder"]),
    "file name out of the csv's folder": (
        lambda root: _rename_row(root, "validation", 2, "../train/train_000.png"),
        ["validation/labels.csv line 2: image name '../train/train_000.png' is outside",
         "no absolute path or '..'"]),
    "file listed twice": (
        lambda root: _rename_row(root, "train", 5, "train_001.png"),
        ["train/labels.csv lines 3 and 5 both list image 'train_001.png'",
         "expected each image once"]),
    "file in two splits": (
        lambda root: _rename_row(root, "validation", 2, _link_to_train_002),
        ["train/labels.csv line 4 (train_002.png) and ",
         "validation/labels.csv line 2 (v.png) are the same image file",
         "expected each image in one split only"]),
    "undecodable image": (
        lambda root: _corrupt(root, "validation", 1, b"\x89PNG\r\n\x1a\n truncated"),
        ["cannot be decoded", "validation/validation_001.png"]),
    "wrong image size": (
        lambda root: _resize(root, "test", 2),
        ["are not 16x64", "test/test_002.png (20x64)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_folder_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    root = tmp_path / "data"
    write_folder_dataset(root, sizes=(16, 4, 4))
    spoil, needles = BAD_CASES[case]
    spoil(root)
    run_dir, export_dir = tmp_path / "run", tmp_path / "exports"
    code, _, err = run_train(["--task", "sequence", "--dataset", str(root), "--epochs", "1",
                                "--output-dir", str(run_dir), "--export-dir", str(export_dir)])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit train: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not run_dir.exists() and not export_dir.exists()


def test_missing_labels_csv_and_bad_options_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_train(["--task", "sequence", "--dataset", str(tmp_path / "empty"),
                              "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "has no labels.csv" in err
    code, _, err = run_train(["--task", "sequence", "--max-length", "1",
                              "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "--max-length must be >= 2" in err
    missing = tmp_path / "nowhere" / "plates"
    code, _, err = run_train(["--task", "sequence", "--dataset", str(missing),
                              "--model-name", "plates", "--output-dir", str(tmp_path / "run")])
    assert code == 2 and f"--dataset {str(missing)!r}: no such folder" in err
    assert "builder" not in err  # not tfds' help on dataset names
    assert not (tmp_path / "run").exists()


def test_help_shows_the_max_length_default_of_the_preset():
    from pipelines.sequence.cli import build_parser
    from pipelines.sequence.config import SEQUENCE_PRESET

    help_text = " ".join(build_parser().format_help().split())
    assert SEQUENCE_PRESET["max_length"] == 8
    assert ("--max-length MAX_LENGTH longest output in tokens: the longest label plus its end "
            "token; default: the preset's (8)") in help_text


def test_letters_fixture_maps_digits():
    assert as_letters("4071") == "eahb"


# ----------------------------------------------------------- model and attention


def test_default_patches_are_full_height_strips_and_attention_covers_them(tmp_path):
    from keras_vit.models import image_to_sequence
    from pipelines.sequence.attention import (
        cross_attention_maps,
        cross_attention_scores,
        plot_cross_attention,
    )
    from pipelines.sequence.config import SequenceConfig, model_kwargs
    from pipelines.sequence.data import SequenceInfo

    vocab = CharVocabulary(tuple("0123456789"))
    info = SequenceInfo("x", (16, 64, 1), vocab, 8, 1, 1, 1, {})
    config = SequenceConfig(hidden_dim=16, depth=1, num_heads=2, mlp_dim=32,
                            decoder_layers=2).resolved()
    kwargs = model_kwargs(config, info)
    assert kwargs["patch_size"] == (16, 4)
    model = image_to_sequence(**kwargs)
    assert model.get_layer("encoder_outputs").output.shape[1] == 16
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 64, 1)).astype("float32")
    tokens = np.array([[4, 5, END, 0, 0, 0, 0, 0], [6, 6, 6, END, 0, 0, 0, 0]], np.int32)
    scores = cross_attention_scores(model, images, tokens)
    assert len(scores) == 2 and scores[0].shape == (2, 2, 8, 16)
    np.testing.assert_allclose(scores[-1].sum(axis=-1), 1.0, atol=1e-5)
    maps = cross_attention_maps(model, images, tokens)
    assert maps.shape == (2, 8, 1, 16)
    np.testing.assert_allclose(maps, scores[-1].mean(axis=1)[:, :, None, :], atol=1e-6)
    path = plot_cross_attention(images, tokens, maps, vocab, tmp_path / "a.png")
    assert Image.open(path).format == "PNG"


def test_variant_patch_or_flag_overrides_the_strip_default():
    from pipelines.sequence.config import SequenceConfig, model_kwargs
    from pipelines.sequence.data import SequenceInfo

    info = SequenceInfo("x", (16, 64, 1), CharVocabulary(("a",)), 8, 1, 1, 1, {})
    assert model_kwargs(SequenceConfig(variant="Ti/8").resolved(), info)["patch_size"] is None
    assert model_kwargs(SequenceConfig(patch_size=(8, 4)).resolved(), info)["patch_size"] == (
        8, 4)


def _pad_crops(image, pad):
    """Every image a pad-then-crop-back of `image` (H, W, C) by up to `pad` pixels can give."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return [padded[dy:dy + height, dx:dx + width]
            for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def test_crop_augmentation_shifts_training_images_only(tmp_path):
    from pipelines.sequence.data import load_sequence_data

    written = write_folder_dataset(tmp_path / "plates", sizes=(12, 4, 4))
    plain = load_sequence_data(str(tmp_path / "plates"), batch_size=12, max_length=8)
    shifted = load_sequence_data(str(tmp_path / "plates"), batch_size=12, max_length=8,
                                 augmentation="crop", seed=3)
    originals = {}  # text -> its source images (short texts can repeat)
    for name, text in written["train"]:
        image = np.asarray(Image.open(tmp_path / "plates" / "train" / name))[..., None]
        originals.setdefault(text, []).append(image.astype(np.float32))
    (images, _), targets, _ = next(iter(shifted.train))
    texts = [shifted.info.vocab.decode(row) for row in np.argmax(targets.numpy(), axis=-1)]
    pad = max(1, 16 // 8)  # the classifier's rule: min(height, width) // 8
    moved = 0
    for image, text in zip(images.numpy(), texts):
        # Each training image is one of the pad-and-crop shifts of its own source image.
        crops = [crop for source in originals[text] for crop in _pad_crops(source, pad)]
        assert any(np.array_equal(image, crop) for crop in crops), text
        moved += not any(np.array_equal(image, source) for source in originals[text])
    assert moved > 0
    for split in ("validation", "test"):  # never augmented
        a_images = np.concatenate([x.numpy() for (x, _), _, _ in getattr(plain, split)])
        b_images = np.concatenate([x.numpy() for (x, _), _, _ in getattr(shifted, split)])
        np.testing.assert_array_equal(a_images, b_images)


def test_flip_is_no_sequence_augmentation():
    from pipelines.sequence.config import SequenceConfig, check_sequence_config

    with pytest.raises(ValueError, match=r"--augmentation must be one of .*'crop_flip'"):
        check_sequence_config(SequenceConfig(augmentation="crop_flip").resolved())


def test_fit_on_train_and_validation_trains_on_both_folders(tmp_path):
    """`fit_on="train+validation"`: every training and validation text (of files, paths
    joined) reaches the training pipeline; validation, test and the split sizes stay."""
    from pipelines.sequence.data import load_sequence_data

    written = write_folder_dataset(tmp_path / "plates", sizes=(20, 6, 5))
    data = load_sequence_data(str(tmp_path / "plates"), batch_size=1, max_length=8,
                              fit_on="train+validation")
    seen = sorted(data.info.vocab.decode(np.argmax(targets[0].numpy(), -1))
                  for _, targets, _ in data.train)
    assert seen == sorted(text for role in ("train", "validation") for _, text in written[role])
    assert sum(1 for _ in data.validation) == 6
    assert (data.info.num_train, data.info.num_validation, data.info.num_test) == (20, 6, 5)
    with pytest.raises(ValueError, match="--fit-on must be .* received 'test'"):
        load_sequence_data(str(tmp_path / "plates"), batch_size=1, max_length=8, fit_on="test")


def test_raw_splits_join_images_or_paths_not_both():
    from pipelines.sequence.sources import RawSplit

    images = RawSplit(texts=["1", "2"], names=["a", "b"], images=np.zeros((2, 4, 4, 1), "uint8"))
    more = RawSplit(texts=["3"], names=["c"], images=np.ones((1, 4, 4, 1), "uint8"))
    joined = images.concatenate(more)
    assert joined.texts == ["1", "2", "3"] and joined.names == ["a", "b", "c"]
    np.testing.assert_array_equal(joined.images[:, 0, 0, 0], [0, 0, 1])
    files = RawSplit(texts=["4"], names=["d"], paths=["d.png"])
    assert files.concatenate(files).paths == ["d.png", "d.png"]
    with pytest.raises(ValueError, match="decoded images with one of image files"):
        images.concatenate(files)


def test_sequence_config_checks_fit_on_and_tta_shift():
    from pipelines.sequence.config import SequenceConfig, check_sequence_config

    assert SequenceConfig().resolved().fit_on == "train+validation"  # the preset's
    assert SequenceConfig().resolved().tta_shift == 2
    for field, value in (("fit_on", "test"), ("tta_shift", -1), ("tta_shift", 1.5)):
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be"):
            check_sequence_config(SequenceConfig(**{field: value}).resolved())
