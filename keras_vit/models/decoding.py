"""Greedy and beam-search decoding of seq2seq models, as graph code.

Both loops are `keras.ops.while_loop`s over decoder positions (no Python loop
per token), so they trace once inside `tf.function` / a SavedModel signature
and run under `jax.jit`. Each step feeds one token through the decoder with a
self-attention key/value cache; the encoder and the cross-attention keys and
values of its output are computed once, before the loop. The loop stops as
soon as every sequence has produced `end_id`.

Conventions: the decoder starts from `start_id`; returned `tokens` `(B,
max_length)` int32 exclude the start token, include the end token, and hold
`pad_id` after it. `pad_id` and `start_id` are never generated.

Test-time view averaging (`num_views=V`): the inputs hold `V` adjacent views
of each item (`keras_vit.layers.ShiftedViews` makes them), every view is
decoded with its own cache, and each step picks the token from the mean of
the views' probabilities, `log(mean_v softmax(logits_v))` (`ViewAverage`),
the same token for all views of an item.
"""

import numpy as np
from keras import ops

from keras_vit.layers.updates import write_slice
from keras_vit.models.decoder_steps import decoder_steps

#: Score given to impossible continuations: finite, so no inf - inf NaNs.
NEG = -1e9


def _check_ids(steps, max_length, **ids):
    if max_length is None:
        max_length = steps.max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"`max_length` must be a positive integer; received {max_length!r}")
    if max_length > steps.max_length:
        raise ValueError(f"max_length={max_length} exceeds the model's max_length="
                         f"{steps.max_length} (its position table)")
    for name, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < steps.vocab_size:
            raise ValueError(f"`{name}` must be a token id in [0, {steps.vocab_size}); "
                             f"received {name}={value!r}")
    return max_length


def _forbidden_penalty(vocab_size, pad_id, start_id, end_id):
    """`(V,)` float32: NEG on `pad_id` and `start_id` (never outputs), 0 elsewhere."""
    penalty = np.zeros(vocab_size, "float32")
    penalty[[i for i in (pad_id, start_id) if i != end_id]] = NEG
    return ops.convert_to_tensor(penalty)


def encode(model, inputs):
    """The encoder's output of a seq2seq model, to decode from more than once.

    Args:
        model: a `transformer` or `image_to_sequence` model.
        inputs: the model's first input: source tokens `(B, S)` or images.

    Returns:
        `(memory (B, S, D), memory_mask (B, 1, S) bool or None)`: pass it as
        `encoded=` to `greedy_decode` or `beam_search` instead of `inputs`
        (the encoder then does not run again).

    Example:
    >>> encoded = encode(model, images)
    >>> greedy, _ = greedy_decode(model, encoded=encoded, start_id=1, end_id=2)
    >>> beam, _ = beam_search(model, encoded=encoded, start_id=1, end_id=2)
    """
    return decoder_steps(model).encode(inputs)


def _encoder_outputs(steps, inputs, encoded):
    """`(memory, mask)`: `steps.encode(inputs)`, or `encoded` checked against the decoder."""
    if (inputs is None) == (encoded is None):
        raise ValueError("pass the model's inputs or `encoded=encode(model, inputs)`, exactly "
                         f"one of them; received inputs={'None' if inputs is None else 'given'}"
                         f", encoded={'None' if encoded is None else 'given'}")
    if encoded is None:
        return steps.encode(inputs)
    if not isinstance(encoded, (tuple, list)) or len(encoded) != 2:
        raise ValueError("`encoded` must be the pair `(memory, memory_mask)` from "
                         f"`encode(model, inputs)`; received {type(encoded).__name__}")
    memory, mask = encoded
    expected = steps.encoder.outputs[0].shape[-1]
    if len(memory.shape) != 3 or memory.shape[-1] != expected:
        raise ValueError(f"`encoded` memory must have shape (batch, tokens, {expected}); "
                         f"received {tuple(memory.shape)}")
    if mask is not None and (len(mask.shape) != 3 or mask.shape[1] != 1):
        raise ValueError("`encoded` memory_mask must have shape (batch, 1, tokens) or be None; "
                         f"received {tuple(mask.shape)}")
    return memory, mask


def _prepare(model, inputs, max_length, copies=1, encoded=None):
    """The `DecoderSteps`, its `StepContext` for `max_length` steps and the number of rows.

    The encoder's memory and mask (of `inputs`, or `encoded`) are repeated
    `copies` times per row (beams).
    """
    steps = decoder_steps(model)
    memory, mask = _encoder_outputs(steps, inputs, encoded)
    if copies > 1:
        memory = ops.repeat(memory, copies, axis=0)
        mask = None if mask is None else ops.repeat(mask, copies, axis=0)
    return steps, steps.context(memory, mask, max_length), ops.shape(memory)[0]


def _check_views(num_views):
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views <= 0:
        raise ValueError(f"`num_views` must be a positive integer; received {num_views!r}")
    return num_views


def _averaged_log_probs(logits, penalty, num_views):
    """`(B * V, vocab)` logits -> `(B, vocab)` float32 log-probabilities.

    One view: `log_softmax(logits + penalty)`. Several (adjacent on the first
    axis): the log of the views' mean probability, floored at 1e-30, with the
    penalty added again so forbidden tokens stay at about `NEG`.
    """
    logits = ops.cast(logits, "float32") + penalty
    if num_views == 1:
        return ops.log_softmax(logits, axis=-1)
    views = ops.reshape(logits, (-1, num_views, logits.shape[-1]))
    mean = ops.mean(ops.softmax(views, axis=-1), axis=1)
    return ops.log(ops.maximum(mean, 1e-30)) + penalty


def greedy_decode(model, inputs=None, *, encoded=None, max_length=None, start_id, end_id,
                  pad_id=0, num_views=1):
    """Most likely token at every step, until `end_id` or `max_length` tokens.

    Args:
        model: a `transformer` or `image_to_sequence` model.
        inputs: the model's first input: source tokens `(B, S)` or images;
            with `num_views` > 1, `(B * num_views, ...)`: the views of each
            item adjacent.
        encoded: instead of `inputs`, their `encode(model, inputs)`: the
            encoder's output, computed once for several decodes.
        max_length: int. Most tokens to generate (end token included);
            defaults to the model's `max_length`.
        start_id, end_id, pad_id: int token ids.
        num_views: int > 0. Views per item whose probabilities are averaged
            at each step (module docstring).

    Returns:
        `(tokens (B, max_length) int32, scores (B,) float32)`: scores are the
        summed log-probabilities of the generated tokens.

    Example:
    >>> tokens, scores = greedy_decode(model, source, max_length=10, start_id=1, end_id=2)
    """
    steps = decoder_steps(model)
    max_length = _check_ids(steps, max_length, start_id=start_id, end_id=end_id, pad_id=pad_id)
    num_views = _check_views(num_views)
    steps, context, rows = _prepare(model, inputs, max_length, encoded=encoded)
    batch = rows // num_views
    penalty = _forbidden_penalty(steps.vocab_size, pad_id, start_id, end_id)

    def cond(index, current, tokens, finished, scores, caches):
        return ops.logical_and(ops.less(index, max_length),
                               ops.logical_not(ops.all(finished)))

    def body(index, current, tokens, finished, scores, caches):
        fed = current if num_views == 1 else ops.repeat(current, num_views, axis=0)
        logits, caches = steps.step(fed, index, caches, context)
        log_probs = _averaged_log_probs(logits, penalty, num_views)
        # One op for the best token (the first on ties, as argmax) and its log-probability.
        best, chosen = ops.top_k(log_probs, 1)
        chosen = ops.where(finished, pad_id, ops.cast(chosen[:, 0], "int32"))
        scores = scores + ops.where(finished, 0.0, best[:, 0])
        tokens = write_slice(tokens, index, chosen[:, None], axis=1)  # servable, see updates.py
        finished = ops.logical_or(finished, ops.equal(chosen, end_id))
        return index + 1, chosen, tokens, finished, scores, caches

    state = (ops.convert_to_tensor(0, "int32"), ops.full((batch,), start_id, "int32"),
             ops.full((batch, max_length), pad_id, "int32"), ops.zeros((batch,), "bool"),
             ops.zeros((batch,), "float32"), steps.init_cache(rows, max_length))
    _, _, tokens, _, scores, _ = ops.while_loop(cond, body, state)
    return tokens, scores


def length_normalised(scores, lengths, length_penalty):
    """`scores / ((5 + length) / 6) ** length_penalty` (Wu et al., 2016, GNMT).

    Args:
        scores: float summed log-probabilities.
        lengths: int numbers of generated tokens (end token included).
        length_penalty: float >= 0. 0 ranks by summed log-probability.
    """
    factor = ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, length_penalty)
    return ops.cast(scores, "float32") / factor


def _gather_beams(values, beams, batch, beam_width, num_views=1):
    """Rows of `values` `(B * V * K, ...)` picked per batch item by `beams` `(B, K)`.

    Rows are ordered item, view, beam; every view of an item follows its beams.
    """
    offsets = ops.reshape(ops.arange(batch * num_views, dtype="int32") * beam_width,
                          (batch, num_views, 1))
    return ops.take(values, ops.reshape(beams[:, None, :] + offsets, (-1,)), axis=0)


def _expand_beams(log_probs, state, index, length_penalty, pad_id):
    """Best `K` continuations of `K` beams: `(beams, tokens, raw, lengths)` each `(B, K)`.

    Finished beams continue only with `pad_id` at no cost, so they compete
    with the live ones on their (fixed) length-normalised score.
    """
    raw, finished, lengths = state
    batch, beam_width, vocab = ops.shape(log_probs)
    pad_only = ops.where(ops.equal(ops.arange(vocab), pad_id), 0.0, NEG)
    log_probs = ops.where(finished[:, :, None], pad_only, log_probs)
    candidate_raw = ops.reshape(raw[:, :, None] + log_probs, (batch, -1))
    candidate_lengths = ops.where(finished, lengths, index + 1)
    candidate_lengths = ops.reshape(ops.repeat(candidate_lengths[:, :, None], vocab, axis=2),
                                    (batch, -1))
    ranked = length_normalised(candidate_raw, candidate_lengths, length_penalty)
    _, best = ops.top_k(ranked, beam_width)
    best = ops.cast(best, "int32")
    return (best // vocab, best % vocab, ops.take_along_axis(candidate_raw, best, axis=1),
            ops.take_along_axis(candidate_lengths, best, axis=1))


def _check_beam_options(beam_width, length_penalty):
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width <= 0:
        raise ValueError(f"`beam_width` must be a positive integer; received {beam_width!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or length_penalty < 0:
        raise ValueError(f"`length_penalty` must be a number >= 0; received {length_penalty!r}")


def beam_search(model, inputs=None, *, encoded=None, beam_width=4, length_penalty=0.6,
                max_length=None, start_id, end_id, pad_id=0, num_views=1):
    """Beam search ranking hypotheses by length-normalised log-probability.

    Keeps `beam_width` hypotheses per input; at each step all their one-token
    continuations are ranked by `length_normalised(score, length)` (finished
    hypotheses stay in the running with their final score) and the best
    `beam_width` survive. Stops when every beam of every input has finished.
    With `beam_width=1` it is greedy decoding.

    Args:
        model: a `transformer` or `image_to_sequence` model.
        inputs: the model's first input: source tokens `(B, S)` or images;
            with `num_views` > 1, `(B * num_views, ...)`: the views of each
            item adjacent.
        encoded: instead of `inputs`, their `encode(model, inputs)`: the
            encoder's output, computed once for several decodes.
        beam_width: int > 0. Hypotheses kept per input.
        length_penalty: float >= 0. GNMT's alpha; 0: summed log-probability.
        max_length: int. Most tokens per hypothesis (end token included);
            defaults to the model's `max_length`.
        start_id, end_id, pad_id: int token ids.
        num_views: int > 0. Views per item whose probabilities are averaged
            at each step (module docstring); a hypothesis is scored by the
            averaged log-probabilities.

    Returns:
        `(tokens (B, max_length) int32, scores (B,) float32)`: the best
        hypothesis and its length-normalised score.

    Example:
    >>> tokens, scores = beam_search(model, source, beam_width=4, start_id=1, end_id=2)

    References:
        Wu et al., "Google's Neural Machine Translation System", 2016 (length penalty).
    """
    _check_beam_options(beam_width, length_penalty)
    steps = decoder_steps(model)
    max_length = _check_ids(steps, max_length, start_id=start_id, end_id=end_id, pad_id=pad_id)
    num_views = _check_views(num_views)
    # Rows: item, view, beam (the memory of each view repeated per beam).
    steps, context, rows = _prepare(model, inputs, max_length, beam_width, encoded)
    batch = rows // (beam_width * num_views)
    flat_batch = batch * beam_width
    penalty = _forbidden_penalty(steps.vocab_size, pad_id, start_id, end_id)

    def cond(index, current, tokens, raw, finished, lengths, caches):
        return ops.logical_and(ops.less(index, max_length),
                               ops.logical_not(ops.all(finished)))

    def body(index, current, tokens, raw, finished, lengths, caches):
        fed = current
        if num_views > 1:  # (B, K) tokens -> every view of each item: (B, V, K) rows
            fed = ops.reshape(ops.repeat(ops.reshape(current, (batch, 1, beam_width)),
                                         num_views, axis=1), (-1,))
        logits, caches = steps.step(fed, index, caches, context)
        logits = ops.reshape(logits, (batch, num_views, beam_width, steps.vocab_size))
        # Views next to each other on the first axis, as `_averaged_log_probs` takes them.
        logits = ops.reshape(ops.transpose(logits, (0, 2, 1, 3)), (-1, steps.vocab_size))
        log_probs = ops.reshape(_averaged_log_probs(logits, penalty, num_views),
                                (batch, beam_width, steps.vocab_size))
        beams, chosen, raw, lengths = _expand_beams(log_probs, (raw, finished, lengths), index,
                                                    length_penalty, pad_id)
        finished = ops.logical_or(ops.take_along_axis(finished, beams, axis=1),
                                  ops.equal(chosen, end_id))
        tokens = ops.reshape(_gather_beams(ops.reshape(tokens, (flat_batch, max_length)), beams,
                                           batch, beam_width), (batch, beam_width, max_length))
        tokens = write_slice(tokens, index, chosen[:, :, None], axis=2)
        caches = [_gather_beams(cache, beams, batch, beam_width, num_views) for cache in caches]
        return index + 1, ops.reshape(chosen, (-1,)), tokens, raw, finished, lengths, caches

    # Beam 0 starts alone: identical copies would fill the beam with duplicates.
    first_only = ops.where(ops.equal(ops.arange(beam_width), 0), 0.0, NEG)
    state = (ops.convert_to_tensor(0, "int32"), ops.full((flat_batch,), start_id, "int32"),
             ops.full((batch, beam_width, max_length), pad_id, "int32"),
             ops.repeat(ops.cast(first_only, "float32")[None], batch, axis=0),
             ops.zeros((batch, beam_width), "bool"), ops.zeros((batch, beam_width), "int32"),
             steps.init_cache(rows, max_length))
    _, _, tokens, raw, _, lengths, _ = ops.while_loop(cond, body, state)
    normalised = length_normalised(raw, lengths, length_penalty)
    best = ops.cast(ops.argmax(normalised, axis=1), "int32")[:, None]
    best_tokens = ops.take_along_axis(tokens, best[:, :, None], axis=1)[:, 0]
    return best_tokens, ops.take_along_axis(normalised, best, axis=1)[:, 0]
