"""Serving an image-to-sequence model: beam search inside the graph, text out.

The SavedModel has the two signatures of every keras-vit export
(`pipelines.serving.contract`): `serving_default` (float32 `images [batch, H,
W, C]` in [0, 255], checked in the graph) and `serving_bytes` (string
`images_bytes [batch]`, decoded by `pipelines.data.images.decode_image_batch`).
Both return:

* `tokens` int32 `[batch, max_length]`: the best beam, end token included,
  padded with 0;
* `text` string `[batch]`: the tokens read through a `tf.lookup.StaticHashTable`
  built from the vocabulary (special tokens read as ""), so no Python runs;
* `scores` float32 `[batch]`: the beam's length-normalised log-probability.

`export_sequence_model` writes, audits (no PyFunc, core ops only), verifies
in a fresh process (`pipelines.serving.sequence_verification`) and publishes
one version through the classifier's all-or-nothing transaction
(`pipelines.serving.transaction.publish_version`).

Example:
>>> export_sequence_model(model, vocab, "sequence_digit_strings", beam_width=4)
PosixPath('savedmodels/sequence_digit_strings/1')
"""

import math
import pathlib

import numpy as np

from pipelines.sequence.vocab import END, PAD, START, VOCAB_FILENAME
from pipelines.serving.contract import (
    ASSETS_EXTRA,
    BYTES_INPUT,
    DEFAULT_CONFIG_BASE_PATH,
    IMAGES_INPUT,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from pipelines.serving.model_info import validate_model_name
from pipelines.serving.samples import as_pixel_images
from pipelines.serving.transaction import (
    MAX_WARMUP_IMAGES,
    audit_ops,
    check_publish_options,
    publish_version,
)
from pipelines.serving.warmup import write_warmup_requests

#: Outputs of both signatures of a sequence export.
SEQUENCE_OUTPUTS = ("tokens", "text", "scores")
#: `task` recorded in the export metadata; `keras-vit predict` reads it.
SEQUENCE_TASK = "sequence"


def image_shape_of(model):
    """`(H, W, C)` of the image input (the first of `[images, decoder_tokens]`)."""
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or None in shape:
        raise ValueError(f"expected an image input (None, H, W, C); the model takes {shape}")
    return tuple(int(d) for d in shape)


def max_length_of(model):
    """The longest sequence the model decodes (its target position table)."""
    return int(model.get_layer("target_position").max_length)


def check_decoding_options(beam_width, length_penalty, tta_shift=0):
    """Raises ValueError unless `beam_width` is an int > 0, `length_penalty` a number >= 0
    and `tta_shift` an int >= 0."""
    if isinstance(tta_shift, bool) or not isinstance(tta_shift, int) or tta_shift < 0:
        raise ValueError(f"tta_shift must be an integer >= 0; received {tta_shift!r}")
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width <= 0:
        raise ValueError(f"beam_width must be a positive integer; received {beam_width!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty) or length_penalty < 0:
        raise ValueError(f"length_penalty must be a finite number >= 0; "
                         f"received {length_penalty!r}")


def text_lookup_table(vocab):
    """`tf.lookup.StaticHashTable` int64 id -> string (special tokens -> "")."""
    import tensorflow as tf

    strings = vocab.id_to_string()
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(np.arange(len(strings)), tf.int64), tf.constant(strings, tf.string))
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _reader(model, vocab, table, beam_width, length_penalty, tta_shift):
    """tf.function(float32 images) -> `{tokens, text, scores}`, shared by both signatures."""
    import tensorflow as tf

    from keras_vit.models import beam_search
    from pipelines.sequence.executor import image_decoder
    from pipelines.serving.signatures import check_float_images

    image_shape = image_shape_of(model)
    max_length = max_length_of(model)
    # shift_averaged_decode with its decoding loop run by the single-threaded
    # executor (a step is hundreds of tiny ops; pipelines/sequence/executor.py):
    # the SavedModel records the choice, TF Serving runs it the same way.
    beam = image_decoder(beam_search, model, tta_shift, beam_width=beam_width,
                         length_penalty=length_penalty, start_id=START, end_id=END, pad_id=PAD)

    def read(images):
        images = check_float_images(images, image_shape)

        def decode():
            tokens, scores = beam(images)
            return tf.cast(tokens, tf.int32), tf.cast(scores, tf.float32)

        # An empty batch gives empty outputs without running the model (some CPU
        # kernels do not take a zero batch).
        tokens, scores = tf.cond(
            tf.equal(tf.shape(images)[0], 0),
            lambda: (tf.zeros([0, max_length], tf.int32), tf.zeros([0], tf.float32)),
            decode)
        text = tf.strings.reduce_join(table.lookup(tf.cast(tokens, tf.int64)), axis=-1)
        return {"tokens": tokens, "text": text, "scores": scores}

    # One function that both signatures call: the beam search is traced and stored
    # once, not once per signature (~6 s of the preset's export).
    return tf.function(read, input_signature=[
        tf.TensorSpec((None, *image_shape), tf.float32)])


def build_sequence_serving_fns(model, vocab, table, *, beam_width=4, length_penalty=0.6,
                               tta_shift=0):
    """`{signature_name: (fn, [tf.TensorSpec])}` for `ExportArchive.add_endpoint`.

    Args:
        model: a Keras `image_to_sequence` model (float32 pixels in [0, 255]).
        vocab: its `CharVocabulary`.
        table: `text_lookup_table(vocab)`, tracked by the archive.
        beam_width, length_penalty: beam search options baked into the graph.
        tta_shift: int >= 0. Beam search over the shifted views of each image
            (`keras_vit.models.shift_averaged_decode`); 0: one view.
    """
    import tensorflow as tf

    from pipelines.data.images import decode_image_batch

    image_shape = image_shape_of(model)
    read = _reader(model, vocab, table, beam_width, length_penalty, tta_shift)

    def serving_default(images):
        return read(images)

    def serving_bytes(images_bytes):
        return read(decode_image_batch(images_bytes, image_shape))

    return {
        SERVING_DEFAULT: (serving_default,
                          [tf.TensorSpec((None, *image_shape), tf.float32, name=IMAGES_INPUT)]),
        SERVING_BYTES: (serving_bytes, [tf.TensorSpec((None,), tf.string, name=BYTES_INPUT)]),
    }


def write_sequence_saved_model(model, vocab, export_dir, *, beam_width=4, length_penalty=0.6,
                               tta_shift=0):
    """Writes the two-signature SavedModel of a sequence model to `export_dir`."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    table = text_lookup_table(vocab)
    archive.track(table)  # a lookup table is not a variable: track it by hand
    for name, (fn, signature) in build_sequence_serving_fns(
            model, vocab, table, beam_width=beam_width, length_penalty=length_penalty,
            tta_shift=tta_shift).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    archive.write_out(str(export_dir), verbose=False)
    return pathlib.Path(export_dir)


def write_sequence_metadata(export_dir, *, model_name, model, vocab, beam_width, length_penalty,
                            tta_shift=0):
    """`assets.extra/keras_vit_export.json` (task "sequence") and `assets.extra/vocab.json`."""
    from pipelines.serving.signatures import common_metadata, write_metadata_file

    extra = pathlib.Path(export_dir) / ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    vocab.save(extra / VOCAB_FILENAME)
    return write_metadata_file(export_dir, {
        "task": SEQUENCE_TASK,
        "model_name": model_name,
        "image_shape": list(image_shape_of(model)),
        "max_length": max_length_of(model),
        "vocabulary": vocab.to_json(),
        "decoding": {"method": "beam_search", "beam_width": beam_width,
                     "length_penalty": length_penalty, "tta_shift": tta_shift},
        "outputs": list(SEQUENCE_OUTPUTS),
        **common_metadata(model),
    }, ensure_ascii=False)


def _write_and_check(model, vocab, tmp_dir, model_name, decoding, warmup_images, verify,
                     verbose):
    from pipelines.serving.sequence_verification import verify_sequence_export

    write_sequence_saved_model(model, vocab, tmp_dir, **decoding)
    write_sequence_metadata(tmp_dir, model_name=model_name, model=model, vocab=vocab,
                            **decoding)
    warmup = warmup_images if warmup_images is not None else np.zeros(
        (2, *image_shape_of(model)), np.float32)
    write_warmup_requests(tmp_dir, model_name, warmup)
    audit_ops(tmp_dir)
    if verify:
        report = verify_sequence_export(tmp_dir, model, vocab, warmup_images, **decoding)
        if verbose:
            print(str(report).replace(str(pathlib.Path(tmp_dir).resolve()), "the export"))


def export_sequence_model(model, vocab, model_name, base_dir="savedmodels", *, beam_width=4,
                          length_penalty=0.6, tta_shift=0, warmup_images=None, verify=True,
                          keep_versions=None, config_base_path=DEFAULT_CONFIG_BASE_PATH,
                          version_policy=None, verbose=True):
    """Exports a sequence model as the next version of `base_dir/model_name`, all or nothing.

    Written into a hidden temp folder, audited, verified in a fresh process,
    then renamed to version `max(existing) + 1`; `base_dir/models.config` is
    updated. Any failure leaves `base_dir` as it was (existing versions are
    never overwritten).

    Args:
        model: Keras `image_to_sequence` model.
        vocab: its `CharVocabulary`.
        model_name: served model name; letters, digits, `_`, `-`.
        base_dir: the savedmodels folder.
        beam_width, length_penalty: beam search in the graph.
        tta_shift: int >= 0. Beam search over the shifts of each image by up
            to this many pixels, averaging the views' probabilities; 0: one view.
        warmup_images: `[N, H, W, C]` pixel images for warm-up and verification.
        verify: run the fresh-process verification before publishing.
        keep_versions: keep only the newest N versions.
        config_base_path, version_policy: as for `export_model`.
        verbose: print the verification report and where the version went.

    Returns:
        `pathlib.Path` of the new version folder.
    """
    model_name = validate_model_name(model_name)
    check_decoding_options(beam_width, length_penalty, tta_shift)
    decoding = {"beam_width": beam_width, "length_penalty": float(length_penalty),
                "tta_shift": tta_shift}
    policy = check_publish_options(keep_versions, version_policy)
    if warmup_images is not None:
        warmup_images = as_pixel_images(warmup_images, image_shape_of(model))[:MAX_WARMUP_IMAGES]

    def write_and_check(tmp_dir):
        _write_and_check(model, vocab, tmp_dir, model_name, decoding, warmup_images, verify,
                         verbose)

    return publish_version(write_and_check, model_name, base_dir, keep_versions=keep_versions,
                           config_base_path=config_base_path, policy=policy, verbose=verbose)
