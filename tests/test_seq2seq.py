"""Tests of the encoder-decoder factories (keras_vit/models/transformer.py).

Expectations come from the definitions: parameter counts from the layer
formulas, padding and causality as invariances of the outputs, tied logits
recomputed in numpy from the embedding matrix, a `.keras` round trip, and a
learnable synthetic task (reversing digit strings) decoded greedily.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vit.models import block_inputs_model
from keras_vit.models.decoder_steps import DecoderSteps
from keras_vit.models.decoding import greedy_decode
from keras_vit.models.transformer import (
    PaddingMask,
    image_to_sequence,
    teacher_forcing_inputs,
    transformer,
)
from keras_vit.models.vit import vision_transformer

PAD, START, END = 0, 1, 2
TINY = dict(num_layers=2, hidden_dim=16, num_heads=2, mlp_dim=32, max_length=8)
TINY_VIT = dict(hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)


pytestmark = pytest.mark.usefixtures("seeded_keras")


def random_tokens(shape, vocab, seed=0, low=3):
    return np.random.default_rng(seed).integers(low, vocab, shape).astype("int32")


# ---------------------------------------------------------------- structure


def expected_transformer_parameters(source_vocab, target_vocab, num_layers, hidden_dim,
                                    mlp_dim, tie, norm_first):
    """Parameter count from the definition of the model (independent of keras_vit)."""
    d, m = hidden_dim, mlp_dim
    attention = 4 * (d * d + d)             # query, key, value, output projections + biases
    norm = 2 * d                            # gamma, beta
    mlp = d * m + m + m * d + d
    encoder_block = attention + 2 * norm + mlp
    decoder_block = 2 * attention + 3 * norm + mlp
    total = source_vocab * d + target_vocab * d + num_layers * (encoder_block + decoder_block)
    total += 0 if tie else target_vocab * d  # separate output projection, no bias
    total += 2 * norm if norm_first else 0   # final norms of both stacks
    return total


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_parameter_count(tie, norm_first):
    model = transformer(11, 13, tie_embeddings=tie, norm_first=norm_first, **TINY)
    expected = expected_transformer_parameters(11, 13, 2, 16, 32, tie, norm_first)
    assert model.count_params() == expected


def test_transformer_outputs_float32_logits_per_decoder_position():
    model = transformer(11, 13, **TINY)
    logits = model([random_tokens((2, 6), 11), random_tokens((2, 5), 13)])
    assert tuple(logits.shape) == (2, 5, 13) and logits.dtype == "float32"
    assert [i.name for i in model.inputs] == ["source_tokens", "decoder_tokens"]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_logits_are_float32(policy):
    keras.config.set_dtype_policy(policy)
    text = transformer(11, 13, tie_embeddings=True, **TINY)
    image = image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=5, decoder_layers=1, **TINY_VIT)
    for model, source in ((text, random_tokens((2, 6), 11)),
                          (image, np.zeros((2, 8, 8, 1), "float32"))):
        logits = model([source, random_tokens((2, 5), 13)])
        assert logits.dtype == "float32" and np.all(np.isfinite(np.asarray(logits)))
        assert model.get_layer("decoder_block_0").compute_dtype == policy.split("_")[1]


def test_source_padding_is_invisible():
    """A padded source gives the logits of the same source without padding."""
    model = transformer(11, 13, **TINY)
    source = random_tokens((1, 4), 11)
    decoder = random_tokens((1, 5), 13)
    padded = np.concatenate([source, np.full((1, 3), PAD, "int32")], axis=1)
    np.testing.assert_allclose(np.asarray(model([padded, decoder])),
                               np.asarray(model([source, decoder])), atol=1e-5)


def test_decoder_is_causal():
    model = transformer(11, 13, **TINY)
    source, decoder = random_tokens((1, 6), 11), random_tokens((1, 6), 13)
    changed = decoder.copy()
    changed[0, 3] = (changed[0, 3] + 1) % 13
    before, after = np.asarray(model([source, decoder])), np.asarray(model([source, changed]))
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
    assert np.abs(after[:, 3:] - before[:, 3:]).max() > 1e-4


def test_tied_output_projection_is_the_transposed_embedding():
    model = transformer(11, 13, tie_embeddings=True, **TINY)
    source, decoder = random_tokens((2, 6), 11), random_tokens((2, 5), 13)
    hidden = keras.Model(model.inputs, model.get_layer("decoder_norm").output)([source, decoder])
    embedding = model.get_layer("target_embedding").embeddings.numpy()
    np.testing.assert_allclose(np.asarray(model([source, decoder])),
                               np.asarray(hidden) @ embedding.T, atol=1e-5)


def test_embeddings_are_scaled_by_sqrt_width():
    model = transformer(11, 13, **TINY)
    decoder = random_tokens((1, 3), 13)
    scaled = keras.Model(model.inputs, model.get_layer("target_scale").output)(
        [random_tokens((1, 2), 11), decoder])
    table = model.get_layer("target_embedding").embeddings.numpy()
    np.testing.assert_allclose(np.asarray(scaled)[0], table[decoder[0]] * np.sqrt(16), rtol=1e-6)


def test_padding_mask_and_teacher_forcing_inputs():
    mask = PaddingMask(pad_id=0)(np.array([[5, 3, 0], [0, 4, 0]]))
    np.testing.assert_array_equal(np.asarray(mask), [[[True, True, False]],
                                                     [[False, True, False]]])
    targets = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])
    np.testing.assert_array_equal(np.asarray(teacher_forcing_inputs(targets, START)),
                                  [[1, 5, 6, 2], [1, 7, 2, 0]])


@pytest.mark.parametrize("factory", ["transformer", "image_to_sequence", "token_pooled_encoder"])
def test_keras_round_trip_without_custom_objects(tmp_path, factory):
    if factory == "transformer":
        model, source = transformer(11, 13, tie_embeddings=True, **TINY), random_tokens((2, 6), 11)
    else:
        # A token-pooled classifier as encoder: its last block is called twice (class
        # token only in the classifier, every token for the decoder).
        encoder = (dict(encoder=vision_transformer("Ti/4", (8, 16, 1), 10,
                                                   **{**TINY_VIT, "depth": 2}))
                   if factory == "token_pooled_encoder" else TINY_VIT)
        model = image_to_sequence("Ti/4", (8, 16, 1), 13, max_length=6, decoder_layers=2,
                                  **encoder)
        source = np.random.default_rng(0).uniform(0, 255, (2, 8, 16, 1)).astype("float32")
    decoder = random_tokens((2, 5), 13)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(reloaded([source, decoder])),
                               np.asarray(model([source, decoder])), atol=1e-6)


# ---------------------------------------------------------- image to sequence


def test_image_decoder_attends_to_every_patch_token():
    model = image_to_sequence("Ti/4", (8, 16, 1), 13, max_length=6, decoder_layers=2,
                              decoder_dim=8, decoder_heads=4, decoder_mlp_dim=24, **TINY_VIT)
    memory, mask = DecoderSteps(model).encode(np.zeros((3, 8, 16, 1), "float32"))
    assert tuple(memory.shape) == (3, (8 // 4) * (16 // 4), 16) and mask is None
    block = model.get_layer("decoder_block_1")
    assert (block.num_heads, block.mlp_dim) == (4, 24)
    assert tuple(model.output.shape) == (None, None, 13)


def test_image_to_sequence_reuses_a_prebuilt_encoder():
    classifier = vision_transformer("Ti/4", (8, 8, 1), 10, **TINY_VIT)
    model = image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=4, decoder_layers=1,
                              encoder=classifier)
    images = np.random.default_rng(6).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    memory, _ = DecoderSteps(model).encode(images)
    assert memory.shape[1] == 4 + 1  # the class token is one of the encoder's tokens
    # Every token, although the classifier's own last block computes the class token only:
    # the block's layers on the tokens entering it, then the encoder norm.
    last = classifier.get_layer("encoder_block_0")  # TINY_VIT: one block
    assert classifier.get_layer("encoder_norm").output.shape[1] == 1
    entering = block_inputs_model(classifier)(images)
    expected = classifier.get_layer("encoder_norm")(last(entering))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(memory),
                               keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)
    # Same layer objects: weights loaded into the classifier are the model's.
    assert model.get_layer("patch_embedding") is classifier.get_layer("patch_embedding")
    assert model.get_layer("decoder_block_0").num_heads == 2


@pytest.mark.parametrize("build, message", [
    (lambda: transformer(11, 13, **{**TINY, "hidden_dim": 15}), "not divisible"),
    (lambda: transformer(11, 13, pad_id=11, **TINY), "pad_id"),
    (lambda: transformer(11, 0, **TINY), "`target_vocab_size` must be a positive integer"),
    (lambda: transformer(0, 13, **TINY), "`source_vocab_size` must be a positive integer"),
    (lambda: image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=4, decoder_layers=0,
                               **TINY_VIT), "`decoder_layers` must be a positive integer"),
    (lambda: image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=4, decoder_layers=1,
                               decoder_heads=3, **TINY_VIT),
     r"is not divisible by decoder_heads \(the encoder's by default\)=3"),
    (lambda: transformer(11, 13, dropout=1.0, **TINY), "dropout"),
    (lambda: image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=0, decoder_layers=1,
                               **TINY_VIT), "max_length"),
    (lambda: image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=4, decoder_layers=1,
                               encoder=vision_transformer("Ti/4", (8, 12, 1), 2, **TINY_VIT)),
     r"\(8, 12, 1\)"),
    (lambda: image_to_sequence("Ti/4", (8, 8, 1), 13, max_length=4, decoder_layers=1,
                               encoder=vision_transformer("Ti/4", (8, 8, 1), 2, **TINY_VIT),
                               depth=3), "either `encoder` or ViT options"),
])
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------- text-to-text check


def reversal_task(count, max_digits, seed):
    """Sources: 1..max_digits random digits (ids 3..12); targets: reversed, then END."""
    rng = np.random.default_rng(seed)
    source = np.full((count, max_digits), PAD, "int32")
    targets = np.full((count, max_digits + 1), PAD, "int32")
    for row, length in enumerate(rng.integers(1, max_digits + 1, count)):
        digits = rng.integers(3, 13, length)
        source[row, :length], targets[row, :length], targets[row, length] = (
            digits, digits[::-1], END)
    return source, targets


@pytest.mark.slow
@pytest.mark.tensorflow_only  # trains and decodes inside tf.function
def test_transformer_learns_to_reverse_digit_strings():
    """Teacher forcing with fit, then greedy decoding: >= 99 % exact sequences."""
    max_digits, steps, batch = 6, 600, 64
    source, targets = reversal_task(steps * batch, max_digits, seed=0)
    model = transformer(13, 13, num_layers=1, hidden_dim=64, num_heads=4, mlp_dim=128,
                        max_length=max_digits + 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 10, warmup_target=3e-3, warmup_steps=steps // 10)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD))
    model.fit([source, teacher_forcing_inputs(targets, START)], targets, batch_size=batch,
              epochs=1, verbose=0)
    test_source, test_targets = reversal_task(1000, max_digits, seed=1)
    decode = tf.function(lambda s: greedy_decode(model, s, max_length=max_digits + 1,
                                                 start_id=START, end_id=END))
    tokens, _ = decode(test_source)
    exact = np.mean(np.all(np.asarray(tokens) == test_targets, axis=1))
    assert exact >= 0.99, f"exact-sequence accuracy {exact:.3f}"
