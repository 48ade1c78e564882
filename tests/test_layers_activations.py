"""keras_vit.layers.activations: Keras' exact GELU with a written-out gradient.

References: the closed form `x Phi(x)` and its derivative `Phi(x) + x phi(x)`
in numpy (float64), Keras' own `gelu` and automatic differentiation of it.
Runs on TensorFlow and JAX.
"""

import math

import keras
import numpy as np
import pytest

from keras_vit.layers.activations import faster_equivalent, gelu
from keras_vit.models.activations import gelu_tanh
from layer_harness import (  # noqa: F401  (fixture is autouse)
    _restore_global_state,
    call_numpy,
    layer_gradients,
    make,
    np_gelu,
    random_weights_,
    rnd,
    to_numpy,
    to_tensor,
)

_erf = np.vectorize(math.erf)


def np_gelu_derivative(x):
    x = np.asarray(x, np.float64)
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    return cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def gradient_of_sum(fn, x):
    """d sum(fn(x) * w) / dx for a fixed random weighting w, on the active backend."""
    weights = keras.ops.convert_to_tensor(
        np.random.default_rng(7).normal(size=x.shape).astype("float32"))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(fn(x), "float32") * weights)
        return to_numpy(tape.gradient(loss, x)), to_numpy(weights)
    import jax

    def loss(v):
        return keras.ops.sum(keras.ops.cast(fn(v), "float32") * weights)

    return to_numpy(jax.grad(loss)(keras.ops.convert_to_tensor(x))), to_numpy(weights)


X = np.linspace(-6.0, 6.0, 241, dtype="float32")


def test_values_are_the_closed_form_and_keras_gelu():
    got = to_numpy(gelu(to_tensor(X)))
    np.testing.assert_allclose(got, np_gelu(X), atol=1e-6)
    keras_gelu = to_numpy(keras.activations.gelu(to_tensor(X), approximate=False))
    np.testing.assert_allclose(got, keras_gelu, atol=1e-6)


def test_gradient_is_the_closed_form_derivative_and_keras_autodiff():
    got, weights = gradient_of_sum(gelu, X)
    np.testing.assert_allclose(got, np_gelu_derivative(X) * weights, atol=1e-5, rtol=1e-5)
    ref, _ = gradient_of_sum(lambda v: keras.activations.gelu(v, approximate=False), X)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, atol", [("bfloat16", 3e-2), ("float16", 4e-3)])
def test_low_precision_keeps_the_dtype_and_agrees_with_keras(dtype, atol):
    x = keras.ops.cast(to_tensor(X), dtype)
    got = gelu(x)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    ref = keras.activations.gelu(x, approximate=False)
    np.testing.assert_allclose(to_numpy(keras.ops.cast(got, "float32")),
                               to_numpy(keras.ops.cast(ref, "float32")), atol=atol, rtol=atol)
    grad, weights = gradient_of_sum(lambda v: gelu(keras.ops.cast(v, dtype)), X)
    np.testing.assert_allclose(grad, np_gelu_derivative(X) * weights, atol=5 * atol,
                               rtol=5 * atol)


def test_only_keras_exact_gelu_is_replaced():
    assert faster_equivalent(keras.activations.get("gelu")) is gelu
    for other in ("relu", "linear", "silu"):
        fn = keras.activations.get(other)
        assert faster_equivalent(fn) is fn
    # The tanh approximation (checkpoints' "gelu_tanh") is another function: kept.
    assert faster_equivalent(gelu_tanh) is gelu_tanh


@pytest.mark.parametrize("activation, expected", [("gelu", gelu), ("relu", "relu")])
def test_feed_forward_uses_it_for_gelu_only(activation, expected):
    layer = make("PositionWiseFeedForward", hidden_dim=6, activation=activation)
    layer.build((2, 3, 4))
    expected = keras.activations.get(expected) if isinstance(expected, str) else expected
    assert layer.dense1.activation is expected
    # The saved configuration still names Keras' activation.
    assert layer.get_config()["activation"] == activation


def test_feed_forward_gradients_match_keras_gelu_autodiff():
    # Reference: the same layer and weights with Keras' gelu behind a lambda
    # (not swapped), differentiated automatically.
    rng = np.random.default_rng(3)
    x = rnd(rng, 2, 5, 8)
    ours = make("PositionWiseFeedForward", hidden_dim=12)
    reference = make("PositionWiseFeedForward", hidden_dim=12,
                     activation=lambda v: keras.activations.gelu(v, approximate=False))
    call_numpy(ours, (x,), {})
    call_numpy(reference, (x,), {})
    random_weights_(ours, rng)
    reference.set_weights(ours.get_weights())
    assert reference.dense1.activation is not gelu
    np.testing.assert_allclose(call_numpy(ours, (x,), {}), call_numpy(reference, (x,), {}),
                               atol=1e-5)
    projections = [rnd(rng, 2, 5, 8)]
    args = (to_tensor(x),)
    ref_weights, ref_inputs = layer_gradients(reference, args, {}, projections)
    our_weights, our_inputs = layer_gradients(ours, args, {}, projections)
    for ref, got in zip(ref_weights + ref_inputs, our_weights + our_inputs, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
