"""keras_vit.layers.LayerNormalization / layer_norm: Keras' layer, written-out gradient.

References: numpy (float64) layer normalisation, and Keras' own
`keras.layers.LayerNormalization` with the same weights, differentiated
automatically. Runs on TensorFlow and JAX.
"""

import keras
import numpy as np
import pytest

from keras_vit.layers import LayerNormalization
from layer_harness import (  # noqa: F401  (fixture is autouse)
    _restore_global_state,
    call_numpy,
    layer_gradients,
    np_layer_norm,
    random_weights_,
    rnd,
    to_numpy,
    to_tensor,
)


def _pair(rng, x, **kwargs):
    """(ours, Keras') built on `x`, with the same random weights."""
    ours = LayerNormalization(**kwargs)
    theirs = keras.layers.LayerNormalization(**kwargs)
    call_numpy(ours, (x,), {})
    call_numpy(theirs, (x,), {})
    random_weights_(ours, rng)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def test_values_match_numpy_and_keras():
    rng = np.random.default_rng(0)
    x = rnd(rng, 2, 5, 8, scale=3.0) + 1.5
    ours, theirs = _pair(rng, x, epsilon=1e-6)
    got = call_numpy(ours, (x,), {})
    gamma, beta = (to_numpy(w) for w in ours.weights)
    np.testing.assert_allclose(got, np_layer_norm(x, gamma, beta, 1e-6), atol=1e-5)
    np.testing.assert_allclose(got, call_numpy(theirs, (x,), {}), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 8), (3, 6)])
def test_gradients_match_keras_autodiff(shape):
    rng = np.random.default_rng(1)
    x = rnd(rng, *shape, scale=2.0)
    ours, theirs = _pair(rng, x, epsilon=1e-5)
    projections = [rnd(rng, *shape)]
    args = (to_tensor(x),)
    ref_weights, ref_inputs = layer_gradients(theirs, args, {}, projections)
    our_weights, our_inputs = layer_gradients(ours, args, {}, projections)
    assert len(our_weights) == 2  # gamma and beta both get gradients
    for ref, got in zip(ref_weights + ref_inputs, our_weights + our_inputs, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("policy, atol", [("mixed_bfloat16", 5e-2), ("mixed_float16", 5e-3)])
def test_mixed_precision_output_dtype_and_values(policy, atol):
    rng = np.random.default_rng(2)
    x = rnd(rng, 2, 4, 16, scale=100.0)  # large values: statistics must be float32
    ours, theirs = _pair(rng, x, epsilon=1e-6, dtype=policy)
    got = ours(to_tensor(x))
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    assert keras.backend.standardize_dtype(got.dtype) == compute
    assert keras.backend.standardize_dtype(ours.gamma.dtype) == "float32"
    ref = theirs(to_tensor(x))
    np.testing.assert_allclose(to_numpy(keras.ops.cast(got, "float32")),
                               to_numpy(keras.ops.cast(ref, "float32")), atol=atol, rtol=atol)
    gamma, beta = (to_numpy(w) for w in ours.weights)
    np.testing.assert_allclose(to_numpy(keras.ops.cast(got, "float32")),
                               np_layer_norm(x, gamma, beta, 1e-6), atol=4 * atol, rtol=4 * atol)


@pytest.mark.parametrize("kwargs", [{"axis": 1}, {"center": False}, {"scale": False},
                                    {"axis": [1, 2]}])
def test_other_configurations_are_keras_own(kwargs):
    rng = np.random.default_rng(3)
    x = rnd(rng, 2, 5, 8)
    ours, theirs = _pair(rng, x, **kwargs)
    np.testing.assert_allclose(call_numpy(ours, (x,), {}), call_numpy(theirs, (x,), {}),
                               atol=1e-6)


def test_config_round_trip_and_serialization():
    layer = LayerNormalization(epsilon=1e-3, name="ln")
    config = layer.get_config()
    assert config == keras.layers.LayerNormalization(epsilon=1e-3, name="ln").get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is LayerNormalization and restored.epsilon == 1e-3
