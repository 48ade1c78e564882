"""Fresh `digit_strings` training strings (`pipelines.sequence.fresh_strings`).

References: the builder's own numpy `render` and `sample_layout` rules
(`pipelines.data.digit_strings`), the digits split (`split_indices`), and the
vocabulary's `encode` for the targets.
"""

import numpy as np
import pytest
import tensorflow as tf
from sequence_fixtures import digit_strings_data_dir  # noqa: F401  (a fixture)

from pipelines.data.digit_strings import (
    CANVAS_SHAPE,
    DIGIT_SIZE,
    JITTER,
    MAX_DIGITS,
    MAX_GAP,
    MIN_DIGITS,
    render,
)
from pipelines.sequence.fresh_strings import (
    GLYPH_PAD,
    StringPool,
    digit_pool,
    fresh_string_batches,
    length_warmup_epochs,
    max_digits_in_epoch,
    render_strings,
    sample_layouts,
)
from pipelines.sequence.vocab import END, PAD, START, CharVocabulary

VOCAB = CharVocabulary(tuple("0123456789"))


@pytest.fixture(scope="module")
def train_pool():
    return digit_pool(("train",))


def seed(a, b=0):
    return tf.constant([a, b], tf.int64)


def test_layouts_follow_the_builders_rules():
    counts, boxes = (t.numpy() for t in sample_layouts(seed(1), 4000))
    height, width = CANVAS_SHAPE[:2]
    assert set(counts) == set(range(MIN_DIGITS, MAX_DIGITS + 1))
    gaps_seen, lefts = set(), set()
    for count, box in zip(counts, boxes):
        rows, cols = box[:count, 0], box[:count, 1]
        assert rows.min() >= 0 and rows.max() <= height - DIGIT_SIZE
        assert rows.max() - rows.min() <= 2 * JITTER
        gaps = np.diff(cols) - DIGIT_SIZE
        assert ((gaps >= 0) & (gaps <= MAX_GAP)).all()  # left to right, never overlapping
        gaps_seen.update(gaps.tolist())
        assert cols[0] >= 0 and cols[-1] + DIGIT_SIZE <= width
        lefts.add(int(cols[0]))
    assert gaps_seen == set(range(MAX_GAP + 1))
    assert 0 in lefts and max(lefts) == width - DIGIT_SIZE  # margins span the whole canvas


@pytest.mark.parametrize("pad", [0, GLYPH_PAD])
def test_render_strings_equals_the_builders_render(train_pool, pad):
    glyphs, _ = train_pool
    counts, boxes = sample_layouts(seed(2), 64)
    picks = np.random.default_rng(0).integers(0, len(glyphs), (64, MAX_DIGITS))
    padded = np.pad(glyphs[picks], [(0, 0), (0, 0), (pad, pad), (pad, pad)]).astype(np.float32)
    canvases = render_strings(tf.constant(padded), counts, boxes, pad=pad).numpy()
    for canvas, count, box, pick in zip(canvases, counts.numpy(), boxes.numpy(), picks):
        np.testing.assert_array_equal(canvas, render(glyphs[pick[:count]], box[:count]))


def test_overlapping_digits_keep_the_brighter_pixel():
    glyphs = np.zeros((1, MAX_DIGITS, DIGIT_SIZE, DIGIT_SIZE), np.float32)
    glyphs[0, 0, :, -1], glyphs[0, 1, :, 0] = 100.0, 50.0
    glyphs[0, 1, :, 1] = 70.0
    boxes = np.zeros((1, MAX_DIGITS, 2), np.int32)
    boxes[0, 1] = (0, DIGIT_SIZE - 1)  # the second digit starts on the first's last column
    canvas = render_strings(tf.constant(glyphs), tf.constant([2]), tf.constant(boxes)).numpy()
    np.testing.assert_array_equal(canvas[0, :DIGIT_SIZE, DIGIT_SIZE - 1:DIGIT_SIZE + 1, 0],
                                  np.tile([100.0, 70.0], (DIGIT_SIZE, 1)))
    assert canvas.sum() == DIGIT_SIZE * 170.0


def test_composed_strings_are_pool_digits_at_their_layout(train_pool):
    glyphs, classes = train_pool
    pool = StringPool(glyphs, classes + 3)
    strings = {k: v.numpy() for k, v in pool.compose(seed(3), 32).items()}
    for index in range(32):
        count, pick = strings["counts"][index], strings["picks"][index]
        np.testing.assert_array_equal(strings["images"][index],
                                      render(glyphs[pick[:count]], strings["boxes"][index, :count]))
        np.testing.assert_array_equal(strings["digit_ids"][index], classes[pick] + 3)
    again = pool.compose(seed(3), 32)
    np.testing.assert_array_equal(again["images"], strings["images"])


def test_each_digit_is_augmented_on_its_own(train_pool):
    glyphs, classes = train_pool
    plain = StringPool(glyphs, classes).compose(seed(4), 64)
    warped = StringPool(glyphs, classes, "affine").compose(seed(4), 64)
    # Same strings and layouts (augmentation draws from its own seed), other pixels.
    for key in ("counts", "boxes", "picks"):
        np.testing.assert_array_equal(plain[key], warped[key])
    differ = np.any(plain["images"].numpy() != warped["images"].numpy(), axis=(1, 2, 3))
    assert differ.mean() > 0.5
    # A digit moves by at most its shift plus what a 10-degree turn and 10 % zoom reach,
    # so the ink stays within GLYPH_PAD pixels of the digits' boxes.
    images = warped["images"].numpy()[..., 0]
    for image, count, boxes in zip(images, warped["counts"].numpy(), warped["boxes"].numpy()):
        near = np.zeros(image.shape, bool)
        for row, col in boxes[:count]:
            near[max(0, row - GLYPH_PAD):row + DIGIT_SIZE + GLYPH_PAD,
                 max(0, col - GLYPH_PAD):col + DIGIT_SIZE + GLYPH_PAD] = True
        assert not image[~near].any()
        assert image.min() >= 0.0 and image.max() <= 255.0 + 1e-3


def string_lengths(one_hot):
    """Digits per string of a batch's one-hot targets."""
    targets = np.argmax(one_hot.numpy(), axis=-1)
    return ((targets != PAD) & (targets != END)).sum(axis=1)


def test_batches_are_teacher_forcing_examples_new_each_epoch(train_pool):
    glyphs, classes = train_pool

    def run(**options):
        options = {"seed": 7, "epochs": 2, **options}
        return list(fresh_string_batches(glyphs, classes, VOCAB, max_length=8, batch_size=16,
                                         num_batches=3, **options))

    batches = run()
    assert len(batches) == 6  # 2 epochs of 3
    for (images, decoder_tokens), one_hot, weights in batches:
        targets = np.argmax(one_hot.numpy(), axis=-1)
        assert images.shape == (16, *CANVAS_SHAPE) and one_hot.shape == (16, 8, VOCAB.size)
        for row, tokens in zip(targets, decoder_tokens.numpy()):
            text = VOCAB.decode(row)
            assert MIN_DIGITS <= len(text) <= MAX_DIGITS and text.isdigit()
            np.testing.assert_array_equal(row, VOCAB.encode(text, 8))
            np.testing.assert_array_equal(tokens, np.concatenate([[START], row[:-1]]))
        np.testing.assert_array_equal(weights.numpy(), (targets != PAD).astype(np.float32))
        assert (targets == END).sum() == 16
    first, second = batches[:3], batches[3:]
    assert not np.array_equal(first[0][0][0].numpy(), second[0][0][0].numpy())

    def assert_same(a_batches, b_batches):
        assert len(a_batches) == len(b_batches)
        for a, b in zip(a_batches, b_batches):
            np.testing.assert_array_equal(a[0][0], b[0][0])
            np.testing.assert_array_equal(a[1], b[1])

    assert_same(batches, run())  # the same seed: the same run
    assert_same(second, run(first_epoch=1))  # a run resumed at epoch 1 gets epoch 1's batches
    other = run(seed=8)[0]
    assert not np.array_equal(other[0][0].numpy(), first[0][0][0].numpy())


def test_length_warm_up_grows_the_longest_string_epoch_by_epoch(train_pool):
    assert [max_digits_in_epoch(epoch, 4) for epoch in range(6)] == [1, 2, 3, 4, 5, 5]
    assert [max_digits_in_epoch(epoch, 2) for epoch in range(3)] == [1, 3, 5]
    assert max_digits_in_epoch(0, 0) == MAX_DIGITS
    for warmup in (1, 2, 3, 4, 9):  # the graph form, as the pipeline computes it
        for epoch in range(12):
            assert int(max_digits_in_epoch(tf.constant(epoch), warmup)) == \
                max_digits_in_epoch(epoch, warmup)
    assert [length_warmup_epochs(n) for n in (1, 5, 6, 40, 90)] == [0, 0, 1, 4, 9]
    # Counts above the cap are lowered to it; the draws below it are the same.
    uncapped, _ = sample_layouts(seed(5), 500)
    capped, boxes = sample_layouts(seed(5), 500, max_digits=3)
    np.testing.assert_array_equal(capped, np.minimum(uncapped, 3))

    glyphs, classes = train_pool
    batches = list(fresh_string_batches(glyphs, classes, VOCAB, max_length=8, batch_size=64,
                                        num_batches=2, seed=3, epochs=40).take(12))
    for epoch in range(6):
        lengths = np.concatenate([string_lengths(batches[2 * epoch + i][1]) for i in range(2)])
        longest = min(epoch + 1, MAX_DIGITS)
        assert lengths.max() == longest and lengths.min() == MIN_DIGITS
        if epoch >= 4:
            assert set(lengths) == set(range(MIN_DIGITS, MAX_DIGITS + 1))
    short_run = list(fresh_string_batches(glyphs, classes, VOCAB, max_length=8, batch_size=64,
                                          num_batches=2, seed=3, epochs=5).take(1))
    assert set(string_lengths(short_run[0][1])) == set(range(MIN_DIGITS, MAX_DIGITS + 1))


def test_pools_hold_only_the_splits_digits():
    from sklearn.datasets import load_digits

    from pipelines.data.digits import split_indices, to_pixel_scale

    digits, splits = load_digits(), split_indices()
    train, _ = digit_pool(("train",))
    both, both_classes = digit_pool(("train", "validation"))
    assert len(train) == len(splits["train"])
    assert len(both) == len(splits["train"]) + len(splits["validation"])
    everything = to_pixel_scale(digits.images)
    expected = np.sort(np.concatenate([splits["train"], splits["validation"]]))
    np.testing.assert_array_equal(both, everything[expected])
    np.testing.assert_array_equal(both_classes, digits.target[expected])


def test_bad_pools_and_lengths_are_refused(train_pool):
    glyphs, classes = train_pool
    with pytest.raises(ValueError, match="max_length=5 is too short"):
        fresh_string_batches(glyphs, classes, VOCAB, max_length=5, batch_size=4,
                             num_batches=1, seed=0)
    with pytest.raises(ValueError, match=r"received shape \(3, 28, 28\)"):
        StringPool(np.zeros((3, 28, 28), np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match="characters \\['9'\\] that are not in"):
        fresh_string_batches(glyphs, classes, CharVocabulary(tuple("012345678")), max_length=8,
                             batch_size=4, num_batches=1, seed=0)
    with pytest.raises(ValueError, match=r"first_epoch must be in \[0, epochs=3\); received 3"):
        fresh_string_batches(glyphs, classes, VOCAB, max_length=8, batch_size=4, num_batches=1,
                             seed=0, epochs=3, first_epoch=3)


def test_load_sequence_data_trains_on_fresh_strings_of_the_fitted_splits(
        digit_strings_data_dir):  # noqa: F811
    from pipelines.sequence.data import load_sequence_data

    common = dict(batch_size=100, max_length=8, data_dir=digit_strings_data_dir, offline=True)
    fixed = load_sequence_data("digit_strings/small", **common)
    fresh = load_sequence_data("digit_strings/small", train_strings="fresh",
                               fit_on="train+validation", **common)
    # As many batches as the fixed training split (train + validation strings) gives.
    assert sum(1 for _ in fresh.train) == fresh.steps_per_epoch == (2000 + 500) // 100
    assert fixed.steps_per_epoch == int(fixed.train.cardinality())
    for data in (fixed, fresh):  # stages.training_options: training pipelines only
        assert data.train.options().autotune.enabled is False
        assert data.validation.options().autotune.enabled is not False
    rest = load_sequence_data("digit_strings/small", train_strings="fresh", epochs=3,
                              first_epoch=1, **common)  # a run of 3 epochs resumed at epoch 1
    assert rest.steps_per_epoch == 2000 // 100 and sum(1 for _ in rest.train) == 2 * 20
    fixed_images = np.concatenate([x.numpy() for (x, _), _, _ in fixed.train])
    fresh_images = next(iter(fresh.train))[0][0].numpy()
    fixed_set = {image.tobytes() for image in fixed_images.astype(np.uint8)}
    assert sum(image.tobytes() in fixed_set for image in fresh_images.astype(np.uint8)) < 5
    for split in ("validation", "test"):  # the builder's fixed strings, as before
        for a, b in zip(getattr(fixed, split), getattr(fresh, split)):
            np.testing.assert_array_equal(a[0][0], b[0][0])
    assert fresh.test_texts == fixed.test_texts
    with pytest.raises(ValueError, match="--train-strings must be one of .* received 'new'"):
        load_sequence_data("digit_strings/small", train_strings="new", **common)


def test_fresh_is_the_digit_strings_default_and_refused_elsewhere(tmp_path):
    from pipelines.sequence.config import SequenceConfig, check_sequence_config

    assert SequenceConfig().resolved().train_strings == "fresh"
    assert SequenceConfig(dataset="digit_strings/small").resolved().train_strings == "fresh"
    folder = tmp_path / "plates"
    folder.mkdir()
    assert SequenceConfig(dataset=str(folder)).resolved().train_strings == "fixed"
    with pytest.raises(ValueError, match="--train-strings fresh composes digit_strings .*plates"):
        check_sequence_config(SequenceConfig(dataset=str(folder), train_strings="fresh").resolved())
    with pytest.raises(ValueError, match="--train-strings fresh composes digit_strings"):
        check_sequence_config(SequenceConfig(dataset="mnist_strings",
                                             train_strings="fresh").resolved())
