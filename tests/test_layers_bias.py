"""keras_vit.layers.bias.add_bias and its use in PositionWiseFeedForward training.

References: `x + bias` for values, and for the bias gradient the closed form
`sum over rows of the upstream gradient`, in numpy float64. The upstream
gradients have a large mean on purpose: summing 1,024 such rows in bfloat16
(what TensorFlow's `BiasAddGrad` does on CPU for Keras' `Dense`) is off by tens
of percent, a float32 sum rounded once is within bfloat16's 0.4 %.
Runs on TensorFlow and JAX.
"""

import keras
import numpy as np
import pytest

from keras_vit.layers.bias import add_bias
from layer_harness import (  # noqa: F401  (fixture is autouse)
    _restore_global_state,
    layer_gradients,
    make,
    to_numpy,
    to_tensor,
)

ROWS, WIDTH = 1024, 24
BF16_RTOL = 1e-2  # a few bfloat16 roundings (8-bit significand: 0.4 % each)


def bfloat16_values(values):
    """`values` rounded to bfloat16, back as float64 numpy."""
    return to_numpy(keras.ops.cast(keras.ops.cast(to_tensor(values), "bfloat16"),
                                   "float32")).astype(np.float64)


def upstream_gradient(shape, seed=0):
    """A fixed weighting with mean 1 and spread 0.3: its row sums grow to ~1,000."""
    rng = np.random.default_rng(seed)
    return (1.0 + 0.3 * rng.standard_normal(shape)).astype("float32")


def gradients_of_weighted_sum(fn, x, bias, weights):
    """`(d/dx, d/dbias)` of `sum(cast(fn(x, bias), float32) * weights)` on the active backend."""
    weights = to_tensor(weights)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([x, bias])
            loss = tf.reduce_sum(tf.cast(fn(x, bias), "float32") * weights)
        return [to_numpy(g) for g in tape.gradient(loss, [x, bias])]
    import jax

    def loss(x_value, bias_value):
        return keras.ops.sum(keras.ops.cast(fn(x_value, bias_value), "float32") * weights)

    return [to_numpy(g) for g in jax.grad(loss, argnums=(0, 1))(x, bias)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_are_x_plus_bias(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, WIDTH)).astype("float32")
    bias = rng.standard_normal(WIDTH).astype("float32")
    got = to_numpy(keras.ops.cast(add_bias(keras.ops.cast(to_tensor(x), dtype),
                                           keras.ops.cast(to_tensor(bias), dtype)), "float32"))
    expected = to_numpy(keras.ops.cast(keras.ops.cast(to_tensor(x), dtype)
                                       + keras.ops.cast(to_tensor(bias), dtype), "float32"))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bias_gradient_is_the_row_sum_in_float32_precision(dtype):
    weights = upstream_gradient((ROWS, WIDTH))
    x = keras.ops.cast(to_tensor(np.zeros((ROWS, WIDTH), "float32")), dtype)
    bias = keras.ops.cast(to_tensor(np.zeros(WIDTH, "float32")), dtype)
    grad_x, grad_bias = gradients_of_weighted_sum(add_bias, x, bias, weights)
    upstream = bfloat16_values(weights) if dtype == "bfloat16" else weights.astype(np.float64)
    np.testing.assert_array_equal(grad_x.astype(np.float64), upstream)
    expected = upstream.sum(axis=0)
    assert expected.min() > 900  # large sums: where a bfloat16 accumulator loses them
    np.testing.assert_allclose(grad_bias.astype(np.float64), expected,
                               rtol=BF16_RTOL if dtype == "bfloat16" else 1e-6)


def test_rank3_inputs_sum_over_every_leading_axis():
    weights = upstream_gradient((4, ROWS // 4, WIDTH), seed=3)
    x = keras.ops.cast(to_tensor(np.zeros(weights.shape, "float32")), "bfloat16")
    bias = keras.ops.cast(to_tensor(np.zeros(WIDTH, "float32")), "bfloat16")
    _, grad_bias = gradients_of_weighted_sum(add_bias, x, bias, weights)
    np.testing.assert_allclose(grad_bias.astype(np.float64),
                               bfloat16_values(weights).sum(axis=(0, 1)), rtol=BF16_RTOL)


def _ffn_bias_gradients(policy, weights_from=None):
    layer = make("PositionWiseFeedForward", hidden_dim=32, dtype=policy)
    x = np.random.default_rng(4).standard_normal((4, ROWS // 4, WIDTH)).astype("float32")
    layer(to_tensor(x))
    if weights_from is not None:
        layer.set_weights(weights_from.get_weights())
    projection = upstream_gradient(x.shape, seed=5)
    grads, _ = layer_gradients(layer, (to_tensor(x),), {"training": True},
                               [to_tensor(projection)])
    by_path = {v.path.split("/", 1)[1]: g for v, g in zip(layer.trainable_weights, grads)}
    return layer, by_path, projection


def test_feed_forward_bfloat16_training_bias_gradients_are_accurate():
    reference, float32_grads, _ = _ffn_bias_gradients("float32")
    _, grads, projection = _ffn_bias_gradients("mixed_bfloat16", weights_from=reference)
    # dense2's bias gradient is exactly the rows' sum of the (bfloat16) output gradient.
    np.testing.assert_allclose(grads["dense2/bias"].astype(np.float64),
                               bfloat16_values(projection).sum(axis=(0, 1)), rtol=BF16_RTOL)
    # dense1's goes through bfloat16 matmuls and GELU: close to float32's, in L2.
    error = (np.linalg.norm(grads["dense1/bias"] - float32_grads["dense1/bias"])
             / np.linalg.norm(float32_grads["dense1/bias"]))
    assert error < 0.05, error


def test_feed_forward_training_path_has_the_inference_values():
    rng = np.random.default_rng(6)
    x = to_tensor(rng.standard_normal((2, 7, WIDTH)).astype("float32"))
    layer = make("PositionWiseFeedForward", hidden_dim=32, dtype="mixed_bfloat16")
    inference = to_numpy(keras.ops.cast(layer(x, training=False), "float32"))
    training = to_numpy(keras.ops.cast(layer(x, training=True), "float32"))
    np.testing.assert_allclose(training, inference, rtol=1e-2, atol=1e-2)
