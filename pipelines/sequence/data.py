"""Input pipelines of the image-to-sequence task: sources, vocabulary, tokens, tf.data.

`load_sequence_data(source, ...)` reads the source (`pipelines.sequence.sources`),
builds the character vocabulary from the training texts, encodes every split's
texts (unknown characters, empty labels and texts longer than `max_length`
fail here, naming the file and line or the example, before anything is
written) and returns batched `tf.data.Dataset`s for teacher forcing:

    ((images float32 (B, H, W, C) in [0, 255], decoder_tokens int32 (B, T)),
     one-hot targets float32 (B, T, V), weights float32 (B, T): 0 on padding)

The one-hot targets let the recipe's label-smoothed loss
(`keras_vit.recipe.SmoothedCrossentropy`) score every position; the weights
keep padding out of the loss and the token accuracy.

Sources: ``digit_strings`` (default config), ``digit_strings/small``, any tfds
`(Image, Text)` dataset, or a folder (``PATH`` or ``folder:PATH``) with
``labels.csv`` files (see `pipelines.sequence.sources`).

Example:
>>> data = load_sequence_data("digit_strings/small", batch_size=64, max_length=8)
>>> (images, decoder_tokens), targets, weights = next(iter(data.train))
>>> data.info.vocab.size
13
"""

import dataclasses
import os

import numpy as np

from pipelines.data.options import FOLDER_PREFIX
from pipelines.sequence.sources import ROLES, read_folder, read_tfds
from pipelines.sequence.vocab import START, CharVocabulary

#: The default sequence dataset (embedded, no network).
DEFAULT_SEQUENCE_DATASET = "digit_strings"
#: `--train-strings`: the source's fixed training examples, or new digit strings each epoch.
TRAIN_STRINGS = ("fixed", "fresh")


@dataclasses.dataclass
class SequenceInfo:
    """What the model and the run need to know about the data."""

    name: str
    image_shape: tuple
    vocab: CharVocabulary
    max_length: int
    num_train: int
    num_validation: int
    num_test: int
    split_origins: dict


@dataclasses.dataclass
class SequenceData:
    """Batched train/validation/test pipelines, the info, and the test split as arrays.

    `train` holds one epoch of fixed strings (repeat it), or with fresh
    strings every remaining epoch of the run; `steps_per_epoch` is its
    batches per epoch either way. `test_images` float32 `(N, H, W, C)` and
    `test_texts` serve the decoding metrics and the attention figure.
    """

    train: object
    validation: object
    test: object
    info: SequenceInfo
    test_images: np.ndarray
    test_texts: list
    steps_per_epoch: int


def is_folder_source(source):
    """Whether `source` names a folder (``folder:PATH`` or an existing directory)."""
    return source.startswith(FOLDER_PREFIX) or os.path.isdir(source)


def check_image_size_source(source, image_size):
    """Raises ValueError when `image_size` is given for a tfds source (read at its own size)."""
    if image_size is not None and not is_folder_source(source):
        raise ValueError(f"--image-size is for folder datasets; {source!r} is a tfds dataset "
                         "read at its own size")


def _looks_like_a_path(source):
    """`/data/x`, `./x`, `~/x`, or `a/b` where `a` is an existing folder: not a tfds name
    (those are `name[/config][:version]`)."""
    first = source.split("/", 1)[0]
    return source.startswith(("/", ".", "~")) or ("/" in source and os.path.isdir(first))


def read_source(source, *, image_size=None, data_dir=None, offline=False, seed=0):
    """The source's `RawSplits` (all file and image checks done)."""
    check_image_size_source(source, image_size)
    if not is_folder_source(source) and _looks_like_a_path(source):
        raise ValueError(f"--dataset {source!r}: no such folder (a folder of images with "
                         "labels.csv, or a tfds dataset name)")
    if is_folder_source(source):
        return read_folder(source.removeprefix(FOLDER_PREFIX), image_size, seed)
    return read_tfds(source, data_dir, offline, seed)


def check_train_strings(train_strings, source, max_length):
    """Raises ValueError unless `train_strings` is "fixed", or "fresh" for ``digit_strings``.

    Fresh strings need `max_length` room for the longest string plus its end token.
    """
    if train_strings not in TRAIN_STRINGS:
        raise ValueError(f"--train-strings must be one of {TRAIN_STRINGS}; "
                         f"received {train_strings!r}")
    if train_strings == "fresh":
        if not composes_fresh_strings(source):
            raise ValueError(f"--train-strings fresh composes digit_strings examples; dataset "
                             f"{source!r} is not digit_strings (use --train-strings fixed)")
        from pipelines.data.digit_strings import MAX_DIGITS

        if max_length < MAX_DIGITS + 1:
            raise ValueError(f"--train-strings fresh composes strings of up to {MAX_DIGITS} "
                             f"digits: --max-length must be >= {MAX_DIGITS + 1} (with the end "
                             f"token); received {max_length}")


def composes_fresh_strings(source):
    """Whether `source` is a ``digit_strings`` config, whose training strings can be composed anew."""
    name = source.split(":")[0]
    return not is_folder_source(source) and name.split("/")[0] == "digit_strings"


def check_max_length(raw, max_length):
    """Raises ValueError naming the longest label when it and its end token exceed `max_length`.

    The message names `--max-length`, its value and the value that fits every label.
    """
    labels = ((text, name) for split in raw.splits.values()
              for text, name in zip(split.texts, split.names))
    text, name = max(labels, key=lambda label: len(label[0]), default=("", ""))
    if len(text) + 1 > max_length:
        raise ValueError(f"{name}: label {text!r} has {len(text)} characters, the most of any "
                         f"label; --max-length is {max_length}, which allows at most "
                         f"{max_length - 1} (plus the end token): raise --max-length to "
                         f"{len(text) + 1} or more")


def encode_splits(raw, max_length):
    """`(vocab, {role: int32 targets (N, max_length)})`: vocabulary from train, every split checked."""
    check_max_length(raw, max_length)
    vocab = CharVocabulary.from_texts(raw.splits["train"].texts)
    tokens = {role: vocab.encode_all(split.texts, max_length, split.names)
              for role, split in raw.splits.items()}
    return vocab, tokens


def _images_dataset(split, image_shape):
    import tensorflow as tf

    from pipelines.data.images import decode_image

    if split.images is not None:
        return tf.data.Dataset.from_tensor_slices(split.images).map(
            lambda image: tf.cast(image, tf.float32))
    return tf.data.Dataset.from_tensor_slices(tf.constant(split.paths, tf.string)).map(
        lambda path: decode_image(tf.io.read_file(path), image_shape),
        num_parallel_calls=tf.data.AUTOTUNE)


def teacher_forcing_example(vocab_size):
    """Map fn: `(image, targets)` -> `((image, decoder_tokens), one_hot, weights)`.

    For one example (`targets` `(T,)`) or a batch (`(B, T)`): the decoder reads
    `START` then the targets shifted right, along the last axis.
    """
    import tensorflow as tf

    def to_example(image, targets):
        start = tf.fill(tf.concat([tf.shape(targets)[:-1], [1]], axis=0), START)
        decoder_tokens = tf.concat([tf.cast(start, targets.dtype), targets[..., :-1]], axis=-1)
        weights = tf.cast(tf.not_equal(targets, 0), tf.float32)
        return (image, decoder_tokens), tf.one_hot(targets, vocab_size), weights

    return to_example


def make_pipeline(split, targets, image_shape, vocab_size, batch_size, *, training, seed,
                  augmentation="none"):
    """Batched teacher-forcing dataset of one split.

    Training: cached, shuffled, augmented (`augmentation`, one of
    `SEQUENCE_AUGMENTATIONS`: the classifier's `crop` shifts or `affine`
    rotate/zoom + shifts, fresh every epoch), full batches. Validation and
    test are never augmented.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.zip((_images_dataset(split, image_shape),
                                   tf.data.Dataset.from_tensor_slices(targets)))
    dataset = dataset.map(teacher_forcing_example(vocab_size)).cache()
    if training:
        dataset = dataset.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    # Full training batches only: one batch shape, one (XLA) compile.
    drop = training and len(targets) >= batch_size
    dataset = dataset.batch(batch_size, drop_remainder=drop)
    if training and augmentation != "none":
        from pipelines.data.augmentation import batch_augmenter

        augment = batch_augmenter(augmentation, image_shape)
        # Per-batch stateless seeds from a seeded stream, as the classifier's pipeline.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, s: (((augment(batch[0][0], s), batch[0][1]),) + batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if training:
        from pipelines.data.stages import training_options

        dataset = dataset.with_options(training_options())
    return dataset


def load_sequence_data(source=DEFAULT_SEQUENCE_DATASET, *, batch_size, max_length,
                       image_size=None, data_dir=None, offline=False, seed=0,
                       augmentation="none", fit_on="train", train_strings="fixed", epochs=1,
                       first_epoch=0):
    """Checked, encoded and batched splits of a sequence source (see the module docstring).

    Args:
        source: ``digit_strings``, ``digit_strings/small``, a tfds `(Image, Text)`
            name, or a folder (``PATH`` / ``folder:PATH``) with labels.csv.
        batch_size: int > 0.
        max_length: int. Target length: the longest text plus its end token must fit.
        image_size: (height, width) to resize folder images to (None: their one size).
        data_dir, offline: tfds data directory, and no downloads.
        seed: seeds carving, shuffling and augmentation.
        augmentation: training-split augmentation, one of `SEQUENCE_AUGMENTATIONS`.
        fit_on: "train", or "train+validation": the training pipeline holds the
            validation examples too (the validation pipeline is still built;
            `info` keeps the source's split sizes).
        train_strings: "fixed": train on the source's training examples;
            "fresh" (``digit_strings`` only): new strings every epoch, as many
            as the training split holds, composed from the digit images of the
            splits fitted on, each digit augmented on its own
            (`pipelines.sequence.fresh_strings`).
        epochs, first_epoch: fresh strings only: the run's epochs (they set the
            length warm-up) and the one it starts from (a resumed run); the
            training pipeline holds epochs `first_epoch` to `epochs - 1`.

    Returns:
        `SequenceData`.

    Raises:
        ValueError: unusable source, bad file, unknown character, empty or too long label.
    """
    check_train_strings(train_strings, source, max_length)
    raw = read_source(source, image_size=image_size, data_dir=data_dir, offline=offline,
                      seed=seed)
    vocab, tokens = encode_splits(raw, max_length)
    shape = raw.image_shape
    splits = dict(raw.splits)
    if fit_on == "train+validation":
        splits["train"] = splits["train"].concatenate(splits["validation"])
        tokens = dict(tokens, train=np.concatenate([tokens["train"], tokens["validation"]]))
    elif fit_on != "train":
        raise ValueError(f"--fit-on must be 'train' or 'train+validation'; received {fit_on!r}")
    pipelines = {role: make_pipeline(splits[role], tokens[role], shape, vocab.size,
                                     batch_size, training=role == "train", seed=seed,
                                     augmentation=augmentation)
                 for role in ROLES if role != "train" or train_strings == "fixed"}
    if train_strings == "fresh":
        from pipelines.sequence.fresh_strings import digit_pool, fresh_string_batches

        glyphs, classes = digit_pool(fit_on.split("+"))
        steps_per_epoch = max(1, len(tokens["train"]) // batch_size)
        pipelines["train"] = fresh_string_batches(
            glyphs, classes, vocab, max_length=max_length, batch_size=batch_size,
            num_batches=steps_per_epoch, seed=seed, augmentation=augmentation,
            canvas_shape=shape, epochs=epochs, first_epoch=first_epoch)
    else:
        steps_per_epoch = int(pipelines["train"].cardinality().numpy())
    test = raw.splits["test"]
    test_images = np.concatenate(
        [batch.numpy() for batch in _images_dataset(test, shape).batch(1024)]
    ).astype(np.float32) if len(test) else np.zeros((0, *shape), np.float32)
    info = SequenceInfo(name=raw.name, image_shape=tuple(shape), vocab=vocab,
                        max_length=max_length, split_origins=raw.origins,
                        **{f"num_{role}": len(raw.splits[role]) for role in ROLES})
    return SequenceData(**pipelines, info=info, test_images=test_images,
                        test_texts=list(test.texts), steps_per_epoch=steps_per_epoch)
