"""Decoding loops run by TensorFlow's single-threaded executor.

A decoding step on one token per row is a few hundred tiny ops. TensorFlow's
default executor runs a function's ops on its inter-op thread pool and hands
"expensive" ones to other threads; for ops of a few microseconds those
hand-offs (a thread waking up, on a VM a vCPU being scheduled) cost more
than the ops. The single-threaded executor runs the ops in order on the
calling thread; big kernels (the encoder's matmuls at batch 32) still use
the intra-op thread pool. It does not run the low-level control flow that
while loops are normally lowered to, so the decoding function's loops and
conds are traced as functional `While`/`If` ops (not lowered); each iteration
then runs the loop body as a function.

Measured on a 2-core Zen 3 (avx2/fma, oneDNN on), the sequence preset's
model at batch 1: the cached greedy loop 3.50 against 4.10 ms for 5 tokens,
the export's beam search over 25 views 32.1 against 36.8 ms (encoder
included); see benchmarks/README.md, "Decoding with the single-threaded
executor" (session 22).

The choice is recorded in the graph (the `executor_type` attribute of the
function call op, on a function marked `_noinline` so that the caller's
graph does not absorb it), so a SavedModel keeps it: a reloaded export runs
its decoding the same way (tested), and TF Serving loads that same graph (a
real `tensorflow_model_server` is not run here). Uses the public
`tf.experimental.function_executor_type` and one TensorFlow internal, the
`control_flow_util_v2` lowering switch; tests/test_decoding_executor.py
checks both against the pinned TensorFlow.

Example:
>>> decode = single_threaded_function(lambda images: greedy_decode(model, images, **ids),
...                                   input_signature=[tf.TensorSpec((None, 16, 64, 1))])
>>> tokens, scores = decode(images)
"""

import contextlib

#: `executor_type` of the function call op (TensorFlow's name).
SINGLE_THREADED_EXECUTOR = "SINGLE_THREADED_EXECUTOR"


@contextlib.contextmanager
def _functional_control_flow():
    """While/If ops created inside are kept functional (not lowered to Switch/Merge).

    The switch is process-wide: a function traced by another thread meanwhile
    would keep its loops functional too (still correct, run by the default
    executor as functional loops).
    """
    from tensorflow.python.ops import control_flow_util_v2

    previous = control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE
    control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE = True
    try:
        yield
    finally:
        control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE = previous


def single_threaded_function(fn, input_signature=None):
    """`tf.function(fn)`, run by the single-threaded executor, eagerly or inside a graph.

    Args:
        fn: a function of tensors (e.g. a `greedy_decode`/`beam_search` call).
        input_signature: optional, as for `tf.function`.

    Returns:
        A callable with `fn`'s arguments and results. Called eagerly it runs
        the traced function; called while another `tf.function` is traced
        (a serving signature), it adds a call op that carries the executor.

    Example:
    >>> beam = single_threaded_function(lambda x: beam_search(model, x, start_id=1, end_id=2))
    >>> tokens, scores = beam(images)
    """
    import tensorflow as tf

    inner = tf.function(fn, input_signature=input_signature,
                        experimental_attributes={"_noinline": True})

    def call(*args):
        # Traced (once per input signature) with functional loops, then called
        # with the executor set: eagerly the call reads it from the context, in a
        # graph the call op records it. Tracing is kept out of the executor's
        # context: a trace inside it lost the setting (the calls ran on the
        # default executor, tests/test_decoding_executor.py checks they do not).
        with _functional_control_flow():
            traced = inner.get_concrete_function(*args)
        with tf.experimental.function_executor_type(SINGLE_THREADED_EXECUTOR):
            return traced(*args)

    call.traced = inner  # the tf.function, for inspecting its graphs
    return call


def image_decoder(decode, model, max_shift, **options):
    """`shift_averaged_decode(decode, model, images, max_shift, **options)`, split in two.

    The encoder (and the shifted views) run where the caller runs them: a
    batch of images is large ops, which the default executor runs in
    parallel. Only the decoding loop, hundreds of tiny ops per token, runs in
    `single_threaded_function`. Decoding everything single-threaded was
    2-12 % slower at batch 32-256 (the encoder lost its inter-op
    parallelism); split, neither part loses (benchmarks/README.md, session 22).

    Args:
        decode: `keras_vit.models.greedy_decode` or `beam_search`.
        model: an `image_to_sequence` model.
        max_shift: int >= 0. Views of up to `max_shift` pixels' shift per image
            (`keras_vit.layers.ShiftedViews`); 0: the image alone.
        **options: `decode`'s keyword arguments (`start_id`, `end_id`, ...).

    Returns:
        fn(images (B, H, W, C)) -> `decode`'s `(tokens, scores)`; call it inside
        a `tf.function` (a serving signature) or eagerly.

    Example:
    >>> read = tf.function(image_decoder(beam_search, model, 2, start_id=1, end_id=2))
    >>> tokens, scores = read(images)
    """
    from keras_vit.layers.views import ShiftedViews
    from keras_vit.models import encode

    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"`max_shift` must be an integer >= 0; received {max_shift!r}")
    views = ShiftedViews(max_shift, dtype="float32") if max_shift else None
    num_views = views.num_views if views is not None else 1

    def loop(memory, *mask):
        return decode(model, encoded=(memory, mask[0] if mask else None), num_views=num_views,
                      **options)

    single_threaded_loop = single_threaded_function(loop)

    def read(images):
        memory, mask = encode(model, images if views is None else views(images))
        return single_threaded_loop(*((memory,) if mask is None else (memory, mask)))

    return read
