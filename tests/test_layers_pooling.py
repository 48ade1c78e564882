"""Tests for TokenPooling: values, shape checks, constructor checks, generic harness checks."""

import keras
import numpy as np
import pytest

from layer_harness import (  # noqa: F401  (fixture is autouse)
    LayerCase,
    _restore_global_state,
    assert_value_error,
    call_numpy,
    harness_tests,
    make,
    rnd,
)

B = 2


def _tokens(*shape):
    return lambda rng: ((rnd(rng, *shape),), {})


CASES = [
    LayerCase("token", "TokenPooling", {}, _tokens(B, 5, 8), [(B, 8)],
              expected_num_trainable_weights=0),
    LayerCase("gap_prefix", "TokenPooling", {"mode": "gap", "num_prefix_tokens": 1},
              _tokens(B, 5, 8), [(B, 8)], expected_num_trainable_weights=0),
]

(
    test_build_and_call,
    test_config_round_trip,
    test_keras_file_round_trip,
    test_mixed_precision,
    test_gradients,
) = harness_tests(CASES)


@pytest.mark.parametrize("prefix", [0, 1, 3])
def test_values(prefix):
    x = rnd(np.random.default_rng(0), B, 5, 4)
    np.testing.assert_allclose(call_numpy(make("TokenPooling"), (x,), {}), x[:, 0])
    gap = make("TokenPooling", mode="gap", num_prefix_tokens=prefix)
    np.testing.assert_allclose(call_numpy(gap, (x,), {}), x[:, prefix:].mean(1), atol=1e-6)


@pytest.mark.parametrize("prefix, length", [(5, 5), (6, 5), (0, 0)])
def test_gap_without_tokens_left_is_an_error(prefix, length):
    layer = make("TokenPooling", mode="gap", num_prefix_tokens=prefix)
    x = np.zeros((B, length, 4), "float32")
    assert_value_error(lambda: call_numpy(layer, (x,), {}), "tokens", (B, length, 4), prefix)
    assert_value_error(lambda: layer(keras.Input((length, 4))), (None, length, 4))


def test_gap_with_an_unknown_length_builds():
    layer = make("TokenPooling", mode="gap", num_prefix_tokens=1)
    assert tuple(layer(keras.Input((None, 4))).shape) == (None, 4)


@pytest.mark.parametrize("shape", [(B, 8), (B, 3, 4, 8)])
@pytest.mark.parametrize("mode", ["token", "gap"])
def test_requires_rank_3(mode, shape):
    x = np.zeros(shape, "float32")
    assert_value_error(lambda: call_numpy(make("TokenPooling", mode=mode), (x,), {}),
                       "tokens", shape)


def test_numpy_integer_prefix_is_stored_as_int():
    layer = make("TokenPooling", mode="gap", num_prefix_tokens=np.int64(1))
    assert layer.num_prefix_tokens == 1 and type(layer.num_prefix_tokens) is int


BAD_CONSTRUCTORS = [
    ("mode", lambda: make("TokenPooling", mode="max"), "max"),
    ("prefix_neg", lambda: make("TokenPooling", num_prefix_tokens=-1), -1),
    ("prefix_float", lambda: make("TokenPooling", num_prefix_tokens=1.0), 1.0),
    ("prefix_bool", lambda: make("TokenPooling", num_prefix_tokens=True), True),
]


@pytest.mark.parametrize(
    "factory,bad", [c[1:] for c in BAD_CONSTRUCTORS], ids=[c[0] for c in BAD_CONSTRUCTORS]
)
def test_constructor_rejects_bad_arguments(factory, bad):
    assert_value_error(factory, bad)
