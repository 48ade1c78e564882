"""Tests of cached step-by-step decoding, greedy decoding and beam search.

References are independent of the decoding code: the full functional model
recomputed on the whole prefix at every step (numpy greedy loop), and a brute
force enumeration of every hypothesis of a tiny model scored in numpy.
"""

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vit.models.decoder_steps import DecoderSteps
from keras_vit.models.decoding import beam_search, encode, greedy_decode, length_normalised
from keras_vit.models.transformer import image_to_sequence, transformer

PAD, START, END = 0, 1, 2
REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("seeded_keras")


def text_model(vocab=11, max_length=8, norm_first=True, tie=False, layers=2):
    return transformer(vocab, vocab, num_layers=layers, hidden_dim=16, num_heads=2, mlp_dim=32,
                       max_length=max_length, max_source_length=6, norm_first=norm_first,
                       tie_embeddings=tie)


def image_model(vocab=11, max_length=7, tie=True):
    return image_to_sequence("Ti/4", (8, 16, 1), vocab, max_length=max_length, decoder_layers=2,
                             hidden_dim=16, depth=1, num_heads=2, mlp_dim=32,
                             tie_embeddings=tie)


def source_tokens(vocab=11, rng=None):
    """Three sources with different amounts of padding."""
    rng = rng or np.random.default_rng(0)
    source = rng.integers(3, vocab, (3, 6)).astype("int32")
    source[0, 4:] = PAD
    source[1, 2:] = PAD
    return source


def images(rng=None):
    return ((rng or np.random.default_rng(0)).uniform(0, 255, (3, 8, 16, 1))).astype("float32")


MODELS = {
    "text_prenorm": (lambda: text_model(), source_tokens),
    "text_postnorm": (lambda: text_model(norm_first=False), source_tokens),
    "text_tied": (lambda: text_model(tie=True), source_tokens),
    "image_tied": (lambda: image_model(), lambda: images()),
}


def log_softmax_np(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def next_token_log_probs(model, source, prefix):
    """log p(. | prefix) from the full model, pad and start excluded (numpy)."""
    logits = np.array(model([source, prefix]), np.float64)[:, -1]
    logits[:, [PAD, START]] = -np.inf
    return log_softmax_np(logits)


def reference_greedy(model, source, max_length, end_id, num_views=1):
    """Greedy decoding recomputing the full model on the whole prefix at every step; with
    `num_views`, from the averaged probabilities of each item's adjacent views."""
    batch = len(source) // num_views
    tokens = np.full((batch, max_length), PAD)
    scores, finished = np.zeros(batch), np.zeros(batch, bool)
    prefix = np.full((batch, 1), START, "int32")
    for step in range(max_length):
        log_probs = (next_token_log_probs(model, source, prefix) if num_views == 1 else
                     view_averaged_log_probs(model, source, prefix, num_views))
        chosen = log_probs.argmax(-1)
        for b in np.flatnonzero(~finished):
            tokens[b, step], scores[b] = chosen[b], scores[b] + log_probs[b, chosen[b]]
        finished |= chosen == end_id
        prefix = np.concatenate([prefix, chosen[:, None].astype("int32")], axis=1)
        if finished.all():
            break
    return tokens, scores


def end_id_stopping_early(model, source, max_length):
    """A token greedy decoding of `source[0]` first emits at a later step: stops it early."""
    free_run, _ = reference_greedy(model, source, max_length, end_id=-1)
    row = list(free_run[0])
    for step in range(max_length - 1, 0, -1):
        if row[step] not in row[:step]:
            return int(row[step]), step
    return int(row[0]), 0


# --------------------------------------------------------- cached decoder step


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_cached_steps_equal_full_prefix_logits(kind):
    build, make_source = MODELS[kind]
    model, source = build(), make_source()
    steps = DecoderSteps(model)
    length = 6
    prefix = np.random.default_rng(1).integers(3, steps.vocab_size, (3, length)).astype("int32")
    prefix[:, 0] = START
    full = np.asarray(model([source, prefix]))
    memory, mask = steps.encode(source)
    context, caches = steps.context(memory, mask, length), steps.init_cache(3, length)
    for index in range(length):
        logits, caches = steps.step(prefix[:, index], index, caches, context)
        assert logits.dtype == "float32"
        np.testing.assert_allclose(np.asarray(logits), full[:, index], atol=2e-5, rtol=1e-5)
        uncached = steps.prefix_logits(memory, mask, prefix[:, : index + 1])
        np.testing.assert_allclose(np.asarray(uncached)[:, -1], full[:, index], atol=2e-5,
                                   rtol=1e-5)


def test_decoder_steps_after_keras_reload(tmp_path):
    model, source = text_model(), source_tokens()
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    expected = greedy_decode(model, source, max_length=6, start_id=START, end_id=END)
    actual = greedy_decode(reloaded, source, max_length=6, start_id=START, end_id=END)
    np.testing.assert_array_equal(np.asarray(actual[0]), np.asarray(expected[0]))
    np.testing.assert_allclose(np.asarray(actual[1]), np.asarray(expected[1]), rtol=1e-6)


# ------------------------------------------------------------------- greedy


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_greedy_equals_full_prefix_recomputation(kind):
    build, make_source = MODELS[kind]
    model, source = build(), make_source()
    max_length = 6
    end_id, stop = end_id_stopping_early(model, source, max_length)
    expected_tokens, expected_scores = reference_greedy(model, source, max_length, end_id)
    tokens, scores = greedy_decode(model, source, max_length=max_length, start_id=START,
                                   end_id=end_id)
    assert tokens.dtype == "int32" and scores.dtype == "float32"
    np.testing.assert_array_equal(np.asarray(tokens), expected_tokens)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-5, atol=1e-5)
    # Row 0 stops at `stop`: the end token, then padding.
    assert tokens[0, stop] == end_id and np.all(np.asarray(tokens)[0, stop + 1:] == PAD)


def test_greedy_never_emits_pad_or_start():
    model, source = text_model(vocab=5), source_tokens(vocab=5)
    # Push every logit towards pad and start: decoding must still avoid them.
    embedding = model.get_layer("target_embedding")
    weights = np.array(embedding.reverse_embeddings.numpy())
    weights[:, [PAD, START]] = 50.0 * np.abs(weights[:, [PAD, START]]).max()
    embedding.reverse_embeddings.assign(weights)
    tokens, _ = greedy_decode(model, source, max_length=5, start_id=START, end_id=END)
    first_end = [list(row).index(END) if END in row else len(row) for row in np.asarray(tokens)]
    for row, end in zip(np.asarray(tokens), first_end):
        assert not np.isin(row[:end], [PAD, START]).any(), row


# ---------------------------------------------------------------- beam search


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_beam_width_one_is_greedy(length_penalty):
    model, source = text_model(), source_tokens()
    greedy_tokens, greedy_scores = greedy_decode(model, source, max_length=6, start_id=START,
                                                 end_id=5)
    tokens, scores = beam_search(model, source, beam_width=1, length_penalty=length_penalty,
                                 max_length=6, start_id=START, end_id=5)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(greedy_tokens))
    lengths = np.sum(np.asarray(tokens) != PAD, axis=1)
    expected = np.asarray(length_normalised(greedy_scores, lengths, length_penalty))
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-5)


def all_hypotheses(vocab, max_length):
    """Every output of a decoder: end-terminated sequences of <= max_length tokens, and
    the sequences of exactly max_length tokens without an end token."""
    content = [t for t in range(vocab) if t not in (PAD, START, END)]
    for length in range(1, max_length + 1):
        for body in itertools.product(content, repeat=length - 1):
            yield list(body) + [END]
    yield from (list(body) for body in itertools.product(content, repeat=max_length))


def hypothesis_score(model, source_row, hypothesis, length_penalty):
    """GNMT-normalised log-probability of `hypothesis` (a list of ids), one full pass."""
    prefix = np.array([[START] + list(hypothesis[:-1])], "int32")
    logits = np.array(model([source_row[None], prefix]), np.float64)[0]
    logits[:, [PAD, START]] = -np.inf
    log_probs = log_softmax_np(logits)
    raw = sum(log_probs[i, t] for i, t in enumerate(hypothesis))
    return raw / ((5 + len(hypothesis)) / 6) ** length_penalty


def brute_force_best(model, source, max_length, length_penalty):
    """Best hypothesis per source row, scored with full-model log-probabilities (numpy)."""
    best = []
    for row in source:
        scored = []
        for hypothesis in all_hypotheses(model.output.shape[-1], max_length):
            scored.append((hypothesis_score(model, row, hypothesis, length_penalty), hypothesis))
        scored.sort(reverse=True)
        assert scored[0][0] - scored[1][0] > 1e-4, "ambiguous best hypothesis: change the seed"
        best.append(scored[0])
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_search_finds_the_best_hypothesis(length_penalty):
    """Vocabulary {pad, start, end, a, b}, 3 tokens: 15 hypotheses, all kept by 15 beams."""
    max_length, beam_width = 3, 15
    model = text_model(vocab=5, max_length=4, layers=1)
    source = source_tokens(vocab=5)
    tokens, scores = beam_search(model, source, beam_width=beam_width,
                                 length_penalty=length_penalty, max_length=max_length,
                                 start_id=START, end_id=END)
    for row, (score, hypothesis) in enumerate(brute_force_best(model, source, max_length,
                                                                length_penalty)):
        expected = hypothesis + [PAD] * (max_length - len(hypothesis))
        np.testing.assert_array_equal(np.asarray(tokens)[row], expected)
        np.testing.assert_allclose(float(scores[row]), score, rtol=1e-5)


def test_narrow_beam_score_is_its_hypothesis_score():
    model, source = text_model(vocab=6, max_length=6, layers=1), source_tokens(vocab=6)
    tokens, scores = beam_search(model, source, beam_width=2, length_penalty=0.6, max_length=5,
                                 start_id=START, end_id=END)
    for row, hypothesis, score in zip(source, np.asarray(tokens), np.asarray(scores)):
        hypothesis = [int(t) for t in hypothesis if t != PAD]
        np.testing.assert_allclose(score, hypothesis_score(model, row, hypothesis, 0.6),
                                   rtol=1e-5)


# ------------------------------------------------------------- graph execution


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("kind", ["text_postnorm", "image_tied"])
def test_decoding_inside_tf_function_matches_eager(kind):
    build, make_source = MODELS[kind]
    model, source = build(), make_source()
    spec = tf.TensorSpec((None,) + source.shape[1:], tf.as_dtype(source.dtype))

    @tf.function(input_signature=[spec])
    def decode(batch):
        greedy = greedy_decode(model, batch, max_length=5, start_id=START, end_id=END)
        beam = beam_search(model, batch, beam_width=3, max_length=5, start_id=START,
                           end_id=END)
        return greedy + beam

    graph = decode(tf.constant(source))
    eager = (greedy_decode(model, source, max_length=5, start_id=START, end_id=END)
             + beam_search(model, source, beam_width=3, max_length=5, start_id=START,
                           end_id=END))
    for g, e in zip(graph, eager):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5)
    # One while loop per decoder, not one traced step per token.
    ops = {op.type for op in decode.get_concrete_function().graph.get_operations()}
    assert "While" in ops or "StatelessWhile" in ops


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_beam_search_in_a_savedmodel(tmp_path):
    model, source = text_model(), source_tokens()

    class Decoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)])
        def __call__(self, batch):
            tokens, scores = beam_search(self.model, batch, beam_width=2, max_length=6,
                                         start_id=START, end_id=END)
            return {"tokens": tokens, "scores": scores}

    tf.saved_model.save(Decoder(), str(tmp_path / "decoder"))
    loaded = tf.saved_model.load(str(tmp_path / "decoder"))
    result = loaded(tf.constant(source))
    tokens, scores = beam_search(model, source, beam_width=2, max_length=6, start_id=START,
                                 end_id=END)
    np.testing.assert_array_equal(result["tokens"].numpy(), np.asarray(tokens))
    np.testing.assert_allclose(result["scores"].numpy(), np.asarray(scores), rtol=1e-5)


JAX_CHECK = textwrap.dedent("""
    import jax, numpy as np, keras
    from tests.test_decoding import (MODELS, END, START, reference_greedy,
                                     end_id_stopping_early)
    from keras_vit.models.decoding import beam_search, greedy_decode
    keras.utils.set_random_seed(0)
    for kind in ("text_prenorm", "image_tied"):
        build, make_source = MODELS[kind]
        model, source = build(), make_source()
        end_id, _ = end_id_stopping_early(model, source, 5)
        expected, _ = reference_greedy(model, source, 5, end_id)
        greedy = jax.jit(lambda s: greedy_decode(model, s, max_length=5, start_id=START,
                                                 end_id=end_id))
        np.testing.assert_array_equal(np.asarray(greedy(source)[0]), expected)
        beam = jax.jit(lambda s: beam_search(model, s, beam_width=1, max_length=5,
                                             start_id=START, end_id=end_id))
        np.testing.assert_array_equal(np.asarray(beam(source)[0]), expected)
    print("JAX OK")
""")


@pytest.mark.slow
def test_decoding_under_jax_jit():
    pytest.importorskip("jax")
    # Most of the child's time is XLA compiling each small eager op: the Makefile's
    # JAX test flags (a lower LLVM optimisation level) take ~20 % off it.
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true")
    result = subprocess.run([sys.executable, "-c", JAX_CHECK], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "JAX OK" in result.stdout


# ----------------------------------------------------------- precision and input


def test_mixed_precision_decoding_gives_float32_scores():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model, source = text_model(), source_tokens()
    steps = DecoderSteps(model)
    memory, mask = steps.encode(source)
    logits, _ = steps.step(np.full(3, START), 0, steps.init_cache(3, 4),
                           steps.context(memory, mask, 4))
    full = np.asarray(model([source, np.full((3, 1), START, "int32")]))[:, 0]
    assert logits.dtype == "float32"
    np.testing.assert_allclose(np.asarray(logits), full, atol=0.1)
    tokens, scores = beam_search(model, source, beam_width=2, max_length=4, start_id=START,
                                 end_id=END)
    assert tokens.dtype == "int32" and scores.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(scores)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_length=9), "exceeds the model's max_length=8"),
    (dict(max_length=0), "max_length"),
    (dict(end_id=11), "end_id"),
    (dict(start_id=-1), "start_id"),
    (dict(beam_width=0), "beam_width"),
    (dict(length_penalty=-1.0), "length_penalty"),
])
def test_bad_decoding_arguments_are_named(kwargs, message):
    model = text_model()
    options = {**dict(max_length=4, start_id=START, end_id=END), **kwargs}
    decode = beam_search if {"beam_width", "length_penalty"} & set(kwargs) else greedy_decode
    with pytest.raises(ValueError, match=message):
        decode(model, source_tokens(), **options)


def test_decoding_a_model_without_a_decoder_is_refused():
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="encoder_outputs"):
        greedy_decode(classifier, np.zeros((1, 4)), max_length=2, start_id=START, end_id=END)


# ------------------------------------------------- decoding from encoder outputs


@pytest.mark.parametrize("kind", ["text_prenorm", "image_tied"])
def test_decoding_from_encoded_equals_decoding_from_inputs(kind):
    """`encoded=encode(model, x)` skips the encoder and changes nothing else; the
    reference is the full model over the whole prefix (`reference_greedy`)."""
    build, make_source = MODELS[kind]
    model, source = build(), make_source()
    encoded = encode(model, source)
    memory, mask = encoded
    # Text: one memory row per source token; image: (8 / 4) * (16 / 4) patches.
    assert memory.shape[:2] == (3, source.shape[1] if kind.startswith("text") else 8)
    assert (mask is None) == kind.startswith("image")
    expected, expected_scores = reference_greedy(model, source, 6, end_id=END)
    tokens, scores = greedy_decode(model, encoded=encoded, max_length=6, start_id=START,
                                   end_id=END)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-5, atol=1e-5)
    options = dict(beam_width=3, length_penalty=0.6, max_length=6, start_id=START, end_id=END)
    from_inputs = beam_search(model, source, **options)
    from_encoded = beam_search(model, encoded=encoded, **options)
    np.testing.assert_array_equal(np.asarray(from_encoded[0]), np.asarray(from_inputs[0]))
    np.testing.assert_allclose(np.asarray(from_encoded[1]), np.asarray(from_inputs[1]),
                               rtol=1e-6)


@pytest.mark.tensorflow_only
def test_one_encoding_decoded_twice_in_a_tf_function():
    model, source = text_model(), source_tokens()

    @tf.function
    def greedy_and_beam(source):
        encoded = encode(model, source)
        return (greedy_decode(model, encoded=encoded, max_length=5, start_id=START,
                              end_id=END)[0],
                beam_search(model, encoded=encoded, beam_width=2, max_length=5,
                            start_id=START, end_id=END)[0])

    greedy, beam = greedy_and_beam(tf.constant(source))
    np.testing.assert_array_equal(greedy.numpy(), reference_greedy(model, source, 5, END)[0])
    np.testing.assert_array_equal(
        beam.numpy(), np.asarray(beam_search(model, source, beam_width=2, max_length=5,
                                             start_id=START, end_id=END)[0]))


@pytest.mark.parametrize("inputs, encoded, message", [
    ("source", "encoded", "exactly one of them; received inputs=given, encoded=given"),
    (None, None, "exactly one of them; received inputs=None, encoded=None"),
    (None, "memory", "must be the pair `\\(memory, memory_mask\\)`"),
    (None, "narrow", "memory must have shape \\(batch, tokens, 16\\); received \\(3, 6, 8\\)"),
    (None, "flat_mask", "memory_mask must have shape \\(batch, 1, tokens\\) or be None; "
                        "received \\(3, 6\\)"),
])
def test_bad_encoded_is_named(inputs, encoded, message):
    model, source = text_model(), source_tokens()
    memory, mask = encode(model, source)
    values = dict(source=source, encoded=(memory, mask), memory=memory,
                  narrow=(memory[:, :, :8], mask), flat_mask=(memory, mask[:, 0]), **{"None": None})
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match=message):
            decode(model, values[str(inputs)], encoded=values[str(encoded)], max_length=4,
                   start_id=START, end_id=END)


# ------------------------------------------------------ test-time view averaging


def view_averaged_log_probs(model, views, prefix, num_views):
    """log(mean over each item's views of p(. | prefix)) from the full model (numpy)."""
    logits = np.array(model([views, np.repeat(prefix, num_views, axis=0)]), np.float64)[:, -1]
    logits[:, [PAD, START]] = -np.inf
    probs = np.exp(log_softmax_np(logits)).reshape(len(prefix), num_views, -1)
    with np.errstate(divide="ignore"):
        return np.log(probs.mean(axis=1))


@pytest.mark.parametrize("kind", ["text_prenorm", "image_tied"])
def test_view_averaged_greedy_equals_full_prefix_recomputation(kind):
    build, make_source = MODELS[kind]
    model = build()
    # Three views of each of two items: any rows grouped in threes.
    views = np.concatenate([make_source(), make_source()[::-1]])
    end_id, _ = end_id_stopping_early(model, views, 6)
    expected_tokens, expected_scores = reference_greedy(model, views, 6, end_id, num_views=3)
    tokens, scores = greedy_decode(model, views, max_length=6, start_id=START, end_id=end_id,
                                   num_views=3)
    assert np.asarray(tokens).shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(tokens), expected_tokens)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_view_averaged_beam_search_finds_the_best_hypothesis(length_penalty):
    """15 beams keep all 15 hypotheses of 3 tokens; each scored by view-averaged log-probs."""
    max_length, beam_width, num_views = 3, 15, 3
    model = text_model(vocab=5, max_length=4, layers=1)
    views = np.concatenate([source_tokens(vocab=5), source_tokens(5, np.random.default_rng(4))])
    tokens, scores = beam_search(model, views, beam_width=beam_width,
                                 length_penalty=length_penalty, max_length=max_length,
                                 start_id=START, end_id=END, num_views=num_views)
    for item in range(2):
        item_views = views[item * num_views:(item + 1) * num_views]
        scored = []
        for hypothesis in all_hypotheses(5, max_length):
            prefix = np.array([[START] + hypothesis[:-1]], "int32")
            steps = [view_averaged_log_probs(model, item_views, prefix[:, :i + 1], num_views)
                     for i in range(len(hypothesis))]
            raw = sum(step[0, t] for step, t in zip(steps, hypothesis))
            scored.append((raw / ((5 + len(hypothesis)) / 6) ** length_penalty, hypothesis))
        scored.sort(reverse=True)
        assert scored[0][0] - scored[1][0] > 1e-4, "ambiguous best hypothesis: change the seed"
        expected = scored[0][1] + [PAD] * (max_length - len(scored[0][1]))
        np.testing.assert_array_equal(np.asarray(tokens)[item], expected)
        np.testing.assert_allclose(float(scores[item]), scored[0][0], rtol=1e-5)


def test_identical_views_decode_as_one():
    model, source = image_model(), images()
    views = np.repeat(source, 4, axis=0)
    options = dict(max_length=5, start_id=START, end_id=END)
    for decode, extra in ((greedy_decode, {}), (beam_search, dict(beam_width=3))):
        single = decode(model, source, **options, **extra)
        averaged = decode(model, views, num_views=4, **options, **extra)
        np.testing.assert_array_equal(np.asarray(averaged[0]), np.asarray(single[0]))
        np.testing.assert_allclose(np.asarray(averaged[1]), np.asarray(single[1]), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("num_views", [0, 1.5, True])
def test_bad_num_views_is_named(num_views):
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="num_views"):
            decode(text_model(), source_tokens(), max_length=4, start_id=START, end_id=END,
                   num_views=num_views)
