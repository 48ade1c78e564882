"""Tests of `pipelines.sequence.executor`: decoding run by the single-threaded executor.

References: the same decoding functions in a plain `tf.function` (default
executor, lowered loops), token for token; the traced graphs and a saved
SavedModel's graph, read as protos.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.ops import control_flow_util_v2

from keras_vit.models import beam_search, greedy_decode, shift_averaged_decode
from keras_vit.models.transformer import image_to_sequence, transformer
from pipelines.sequence.executor import (
    SINGLE_THREADED_EXECUTOR,
    image_decoder,
    single_threaded_function,
)

pytestmark = [pytest.mark.usefixtures("seeded_keras"), pytest.mark.tensorflow_only]

IDS = dict(start_id=1, end_id=2, pad_id=0)
IMAGE_SHAPE = (8, 16, 1)


@pytest.fixture(scope="module")
def model():
    return image_to_sequence("Ti/4", IMAGE_SHAPE, 11, max_length=7, decoder_layers=2,
                             hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)


def _images(count=3):
    return tf.constant(np.random.default_rng(0).uniform(0, 255, (count, *IMAGE_SHAPE)),
                       tf.float32)


DECODERS = {
    "greedy": lambda m: lambda x: greedy_decode(m, x, **IDS),
    "beam": lambda m: lambda x: beam_search(m, x, beam_width=3, length_penalty=0.6, **IDS),
    "shifted views, beam": lambda m: lambda x: shift_averaged_decode(
        beam_search, m, x, 1, beam_width=2, **IDS),
}


@pytest.mark.parametrize("decoder", DECODERS)
def test_same_tokens_and_scores_as_the_default_executor(model, decoder):
    fn = DECODERS[decoder](model)
    images = _images()
    expected_tokens, expected_scores = tf.function(fn)(images)
    tokens, scores = single_threaded_function(fn)(images)
    np.testing.assert_array_equal(tokens.numpy(), expected_tokens.numpy())
    # Same kernels in another order: float sums may round differently.
    np.testing.assert_allclose(scores.numpy(), expected_scores.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_shift", [0, 1])
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_image_decoder_equals_shift_averaged_decode(model, method, max_shift):
    decode, options = {"greedy": (greedy_decode, {}),
                       "beam": (beam_search, {"beam_width": 3, "length_penalty": 0.6})}[method]
    images = _images()
    expected = tf.function(lambda x: shift_averaged_decode(decode, model, x, max_shift,
                                                           **options, **IDS))(images)
    got = tf.function(image_decoder(decode, model, max_shift, **options, **IDS))(images)
    np.testing.assert_array_equal(got[0].numpy(), expected[0].numpy())
    np.testing.assert_allclose(got[1].numpy(), expected[1].numpy(), rtol=1e-6, atol=1e-6)


def test_image_decoder_passes_a_source_mask_to_the_loop():
    """A text model's padding mask reaches the single-threaded loop (eagerly, too)."""
    text = transformer(11, 11, num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=32,
                       max_length=6, max_source_length=6)
    source = np.random.default_rng(1).integers(3, 11, (3, 6)).astype("int32")
    source[0, 3:] = 0
    source[1, 1:] = 0
    expected = greedy_decode(text, source, **IDS)
    got = image_decoder(greedy_decode, text, 0, **IDS)(tf.constant(source))
    np.testing.assert_array_equal(got[0].numpy(), np.asarray(expected[0]))


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_image_decoder_rejects_a_bad_shift(model, bad):
    with pytest.raises(ValueError, match=r"`max_shift` must be an integer >= 0; received"):
        image_decoder(greedy_decode, model, bad, **IDS)


def _nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def test_loops_are_functional_and_the_lowering_switch_is_restored(model):
    before = control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE
    decode = single_threaded_function(DECODERS["beam"](model),
                                      input_signature=[tf.TensorSpec((None, *IMAGE_SHAPE))])
    decode(_images(1))
    graph = decode.traced.get_concrete_function().graph.as_graph_def()
    loops = [n for n in _nodes(graph) if n.op in ("While", "StatelessWhile")]
    assert loops, "beam search traced without a while loop"
    # Lowered loops would make the single-threaded executor fail at run time.
    assert all(not n.attr["_lower_using_switch_merge"].b for n in loops)
    assert control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE == before
    # A plain tf.function traced afterwards lowers its loops again.
    plain = tf.function(DECODERS["greedy"](model)).get_concrete_function(
        tf.TensorSpec((None, *IMAGE_SHAPE))).graph.as_graph_def()
    assert all(n.attr["_lower_using_switch_merge"].b for n in _nodes(plain)
               if n.op in ("While", "StatelessWhile"))


def test_the_executor_is_kept_by_a_saved_model(model, tmp_path):
    decode = single_threaded_function(DECODERS["greedy"](model))
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda images: {"tokens": decode(images)[0]},
                               input_signature=[tf.TensorSpec((None, *IMAGE_SHAPE))])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "saved_model.pb").read_bytes())
    executors = [n.attr["executor_type"].s.decode() for n in _nodes(saved.meta_graphs[0].graph_def)
                 if n.op in ("PartitionedCall", "StatefulPartitionedCall")]
    assert SINGLE_THREADED_EXECUTOR in executors
    # ... on a call the loader will not inline into the signature's graph.
    assert any(f.attr["_noinline"].b for f in saved.meta_graphs[0].graph_def.library.function)
    images = _images()
    served = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](images=images)
    np.testing.assert_array_equal(served["tokens"].numpy(),
                                  tf.function(DECODERS["greedy"](model))(images)[0].numpy())


def test_a_lowered_loop_is_what_the_executor_refuses(model):
    """Why the loops are traced functional: the executor does not run lowered ones."""
    lowered = tf.function(DECODERS["greedy"](model))
    lowered(_images(1))  # traced with the default executor: loops lowered
    with pytest.raises(tf.errors.FailedPreconditionError, match="low level control flow"):
        with tf.experimental.function_executor_type(SINGLE_THREADED_EXECUTOR):
            lowered(_images(1))


def test_every_op_of_the_loop_runs_on_one_thread_eagerly_and_in_a_graph():
    """The executor is really used, also when called from another tf.function.

    A numpy op in a 200-step loop body records its thread. The default
    executor spreads the steps over its inter-op pool (checked, so the probe
    can tell the two apart); the single-threaded one runs them all on one
    thread. In a graph the call must also not be inlined into the caller
    (`_noinline`): inlined, its ops ran on the caller's executor (seen).
    """
    import threading

    steps = 200

    def thread_ids(x):
        def body(i, ids):
            here = tf.numpy_function(lambda: np.int64(threading.get_ident()), [], tf.int64)
            return i + 1, tf.tensor_scatter_nd_update(ids, [[i]], [here])
        return tf.while_loop(lambda i, ids: i < steps, body,
                             (0, tf.zeros([steps], tf.int64) + x))[1]

    def threads(fn):
        return [len(set(fn(tf.constant(0, tf.int64)).numpy())) for _ in range(3)]

    assert max(threads(tf.function(thread_ids))) > 1
    assert threads(single_threaded_function(thread_ids)) == [1, 1, 1]
    inner = single_threaded_function(thread_ids)
    assert threads(tf.function(lambda x: inner(x))) == [1, 1, 1]
