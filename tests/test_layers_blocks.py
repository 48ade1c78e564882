"""Tests for the building blocks of keras_vit.layers (from the spec).

PositionWiseFeedForward, AddNorm, DropPath, TransformerEncoderBlock and
TransformerDecoderBlock: numpy compositions built from the sublayers'
weights, masking / causality / permutation properties, cached decoding,
constructor checks, plus the generic harness checks.
"""

import keras
import numpy as np
import pytest

from layer_harness import (  # noqa: F401  (fixture is autouse)
    REQUIRED,
    LayerCase,
    _restore_global_state,
    assert_signature,
    assert_value_error,
    call_layer,
    call_numpy,
    harness_tests,
    layer_class,
    make,
    np_causal_mask,
    np_ffn,
    np_layer_norm,
    np_mha,
    np_valid_lens_mask,
    random_weights_,
    rnd,
    to_numpy,
)

B = 2
ATOL = 1e-5



def _inputs(*shapes, **extra):
    def make_inputs(rng):
        args = tuple(rnd(rng, *s) for s in shapes)
        kwargs = {k: (v(rng) if callable(v) else v) for k, v in extra.items()}
        return args, kwargs

    return make_inputs


def _vl(*values):
    return lambda rng: np.array(values, dtype="int32")


def _encoder_key_bias(block):
    return [block.attention.weights[3]]


def _decoder_key_biases(block):
    return [block.self_attention.weights[3], block.cross_attention.weights[3]]


CASES = [
    LayerCase(
        "ffn", "PositionWiseFeedForward", {"hidden_dim": 16},
        _inputs((B, 5, 8)), [(B, 5, 8)], expected_num_trainable_weights=4,
    ),
    LayerCase(
        "ffn_relu_dropout", "PositionWiseFeedForward",
        {"hidden_dim": 6, "activation": "relu", "dropout": 0.1},
        _inputs((B, 3, 5)), [(B, 3, 5)], expected_num_trainable_weights=4,
    ),
    LayerCase(
        "addnorm", "AddNorm", {}, _inputs((B, 5, 8), (B, 5, 8)), [(B, 5, 8)],
        expected_num_trainable_weights=2,
    ),
    LayerCase(
        "addnorm_dropout_eps", "AddNorm", {"dropout": 0.2, "epsilon": 1e-3},
        _inputs((B, 4, 6), (B, 4, 6)), [(B, 4, 6)], expected_num_trainable_weights=2,
    ),
    LayerCase(
        "drop_path", "DropPath", {"rate": 0.3}, _inputs((B, 5, 8)), [(B, 5, 8)],
        expected_num_trainable_weights=0,
    ),
    LayerCase(
        "encoder_prenorm", "TransformerEncoderBlock", {"num_heads": 2, "mlp_dim": 16},
        _inputs((B, 5, 8)), [(B, 5, 8)],
        expected_num_trainable_weights=16, zero_grad_ok=_encoder_key_bias,
    ),
    LayerCase(
        "encoder_postnorm_scores", "TransformerEncoderBlock",
        {"num_heads": 4, "mlp_dim": 12, "norm_first": False, "activation": "relu",
         "epsilon": 1e-5},
        _inputs((B, 5, 8), valid_lens=_vl(3, 5), return_attention_scores=True),
        [(B, 5, 8), (B, 4, 5, 5)],
        expected_num_trainable_weights=16, zero_grad_ok=_encoder_key_bias,
    ),
    LayerCase(
        "encoder_dropouts", "TransformerEncoderBlock",
        {"num_heads": 2, "mlp_dim": 8, "dropout": 0.1, "attention_dropout": 0.1,
         "drop_path": 0.1},
        _inputs((B, 4, 6)), [(B, 4, 6)],
        expected_num_trainable_weights=16, zero_grad_ok=_encoder_key_bias,
    ),
    LayerCase(
        "decoder", "TransformerDecoderBlock", {"num_heads": 2, "mlp_dim": 16},
        _inputs((B, 4, 8), (B, 5, 8), encoder_valid_lens=_vl(3, 5)), [(B, 4, 8)],
        expected_num_trainable_weights=26, zero_grad_ok=_decoder_key_biases,
    ),
    LayerCase(
        "decoder_prenorm", "TransformerDecoderBlock",
        {"num_heads": 2, "mlp_dim": 8, "norm_first": True, "activation": "gelu",
         "dropout": 0.1, "drop_path": 0.1},
        _inputs((B, 3, 6), (B, 4, 6)), [(B, 3, 6)],
        expected_num_trainable_weights=26, zero_grad_ok=_decoder_key_biases,
    ),
    LayerCase(
        "decoder_encoder_width_differs", "TransformerDecoderBlock",
        {"num_heads": 2, "mlp_dim": 8},
        _inputs((B, 3, 8), (B, 4, 6), encoder_valid_lens=_vl(2, 4)), [(B, 3, 8)],
        expected_num_trainable_weights=26, zero_grad_ok=_decoder_key_biases,
    ),
]

(
    test_build_and_call,
    test_config_round_trip,
    test_keras_file_round_trip,
    test_mixed_precision,
    test_gradients,
) = harness_tests(CASES)


# ----------------------------------------------------------------------------
# Numpy compositions from the sublayers' weights
# ----------------------------------------------------------------------------
def np_ln_of(norm, x, eps):
    return np_layer_norm(x, to_numpy(norm.gamma), to_numpy(norm.beta), eps)


def np_ffn_of(mlp, x, activation):
    return np_ffn(
        x,
        to_numpy(mlp.dense1.kernel), to_numpy(mlp.dense1.bias),
        to_numpy(mlp.dense2.kernel), to_numpy(mlp.dense2.bias),
        activation,
    )


def np_mha_of(mha, q, kv, mask):
    return np_mha(q, kv, None, mha.get_weights(), mask=mask)[0]


def np_encoder(block, x, mask, norm_first, activation, eps):
    x = np.asarray(x, np.float64)
    if norm_first:
        h = np_ln_of(block.norm1, x, eps)
        x = x + np_mha_of(block.attention, h, h, mask)
        return x + np_ffn_of(block.mlp, np_ln_of(block.norm2, x, eps), activation)
    x = np_ln_of(block.norm1, x + np_mha_of(block.attention, x, x, mask), eps)
    return np_ln_of(block.norm2, x + np_ffn_of(block.mlp, x, activation), eps)


def np_decoder(block, x, enc, self_mask, cross_mask, norm_first, activation, eps):
    x = np.asarray(x, np.float64)
    if norm_first:
        h = np_ln_of(block.norm1, x, eps)
        x = x + np_mha_of(block.self_attention, h, h, self_mask)
        h = np_ln_of(block.norm2, x, eps)
        x = x + np_mha_of(block.cross_attention, h, enc, cross_mask)
        return x + np_ffn_of(block.mlp, np_ln_of(block.norm3, x, eps), activation)
    x = np_ln_of(block.norm1, x + np_mha_of(block.self_attention, x, x, self_mask), eps)
    x = np_ln_of(block.norm2, x + np_mha_of(block.cross_attention, x, enc, cross_mask), eps)
    return np_ln_of(block.norm3, x + np_ffn_of(block.mlp, x, activation), eps)


# ----------------------------------------------------------------------------
# PositionWiseFeedForward
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_ffn_matches_numpy(activation):
    rng = np.random.default_rng(0)
    x = rnd(rng, B, 5, 8)
    layer = make("PositionWiseFeedForward", hidden_dim=12, activation=activation)
    call_numpy(layer, (x,), {})
    random_weights_(layer, rng)
    out = call_numpy(layer, (x,), {})
    assert tuple(layer.dense1.kernel.shape) == (8, 12)
    assert tuple(layer.dense2.kernel.shape) == (12, 8)
    np.testing.assert_allclose(out, np_ffn_of(layer, x, activation), atol=ATOL)
    # Per position: token t of the output depends on token t only.
    x2 = x.copy()
    x2[:, 2] += 1.0
    out2 = call_numpy(layer, (x2,), {})
    np.testing.assert_allclose(np.delete(out2, 2, axis=1), np.delete(out, 2, axis=1),
                               atol=1e-6)


def test_ffn_default_activation_is_gelu():
    rng = np.random.default_rng(1)
    x = rnd(rng, B, 3, 4)
    layer = make("PositionWiseFeedForward", hidden_dim=6)
    out = call_numpy(layer, (x,), {})
    np.testing.assert_allclose(out, np_ffn_of(layer, x, "gelu"), atol=ATOL)


def test_ffn_dropout_only_in_training():
    rng = np.random.default_rng(2)
    x = rnd(rng, B, 5, 8)
    layer = make("PositionWiseFeedForward", hidden_dim=16, dropout=0.5)
    call_numpy(layer, (x,), {})  # build
    ref = np_ffn_of(layer, x, "gelu")
    np.testing.assert_allclose(call_numpy(layer, (x,), {}, training=False), ref, atol=ATOL)
    trained = call_numpy(layer, (x,), {}, training=True)
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, ref, atol=1e-4)


# ----------------------------------------------------------------------------
# AddNorm
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-6, 1e-3])
def test_add_norm_matches_numpy(epsilon):
    rng = np.random.default_rng(3)
    x, y = rnd(rng, B, 4, 6), rnd(rng, B, 4, 6, scale=0.2)
    layer = make("AddNorm", epsilon=epsilon)
    call_numpy(layer, (x, y), {})
    assert isinstance(layer.norm, keras.layers.LayerNormalization)
    random_weights_(layer, rng)
    out = call_numpy(layer, (x, y), {})
    ref = np_layer_norm(x + y, to_numpy(layer.norm.gamma), to_numpy(layer.norm.beta), epsilon)
    np.testing.assert_allclose(out, ref, atol=ATOL)


def test_add_norm_default_epsilon_and_dropout():
    rng = np.random.default_rng(4)
    # Small variance so that epsilon matters.
    x, y = rnd(rng, B, 4, 6, scale=0.01), rnd(rng, B, 4, 6, scale=0.01)
    layer = make("AddNorm", dropout=0.5)
    out = call_numpy(layer, (x, y), {})
    ref = np_layer_norm(x + y, 1.0, 0.0, 1e-6)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_allclose(call_numpy(layer, (x, y), {}, training=False), out, atol=1e-6)
    trained = call_numpy(layer, (x, y), {}, training=True)
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, out, atol=1e-3)


# ----------------------------------------------------------------------------
# DropPath
# ----------------------------------------------------------------------------
def test_drop_path_is_identity_at_inference():
    rng = np.random.default_rng(5)
    x = rnd(rng, B, 5, 8)
    layer = make("DropPath", rate=0.5)
    np.testing.assert_array_equal(call_numpy(layer, (x,), {}), x)
    np.testing.assert_array_equal(call_numpy(layer, (x,), {}, training=False), x)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_drop_path_drops_whole_samples_and_rescales(rate):
    rng = np.random.default_rng(6)
    x = rnd(rng, 64, 3, 4) + 5.0  # no zero entries
    layer = make("DropPath", rate=rate)
    out = call_numpy(layer, (x,), {}, training=True)
    dropped = np.all(out == 0, axis=(1, 2))
    kept = ~dropped
    np.testing.assert_allclose(out[kept], x[kept] / (1.0 - rate), rtol=1e-5)
    assert dropped.any() and kept.any()
    # Roughly `rate` of the samples are dropped (64 samples: loose bound).
    assert abs(dropped.mean() - rate) < 0.25
    # Different calls draw different masks eventually.
    masks = {tuple(np.all(call_numpy(layer, (x,), {}, training=True) == 0, axis=(1, 2)))
             for _ in range(3)}
    assert len(masks) > 1


def test_drop_path_rate_zero_is_identity_in_training():
    rng = np.random.default_rng(7)
    x = rnd(rng, B, 5, 8)
    out = call_numpy(make("DropPath", rate=0.0), (x,), {}, training=True)
    np.testing.assert_allclose(out, x, atol=0)


# ----------------------------------------------------------------------------
# TransformerEncoderBlock
# ----------------------------------------------------------------------------
def _encoder_mask_case(kind, rng):
    """`(call kwargs, the (B, 5, 5) boolean mask they mean)` for 5 tokens; `None`: no mask.

    Kinds: key lengths `(B,)`, per-query lengths `(B, T)`, a full `(B, T, T)`
    mask, a key-only `(B, 1, T)` mask, a one-axis `(T,)` mask.
    """
    if kind == "none":
        return {}, None
    if kind == "valid_lens":
        lens = np.array([2, 5], "int32")
        return {"valid_lens": lens}, np_valid_lens_mask(lens, 5, 5)
    if kind == "per_query_lens":  # each query its own number of keys
        lens = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], "int32")
        return {"valid_lens": lens}, np.arange(5)[None, None, :] < lens[:, :, None]
    if kind == "attention_mask":  # one row per query
        mask = rng.random((B, 5, 5)) > 0.4
        mask[:, :, 1] = True
        return {"attention_mask": mask}, mask
    if kind == "key_mask":  # one row for every query
        keys = np.array([[[1, 1, 0, 1, 0]], [[0, 1, 1, 1, 1]]], bool)
        return {"attention_mask": keys}, np.broadcast_to(keys, (B, 5, 5))
    if kind == "one_axis_mask":  # keys only, for every item and query
        keys = np.array([1, 0, 1, 1, 0], bool)
        return {"attention_mask": keys}, np.broadcast_to(keys, (B, 5, 5))
    raise ValueError(kind)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
@pytest.mark.parametrize("mask_kind", ["none", "valid_lens", "attention_mask"])
def test_encoder_block_matches_numpy(norm_first, mask_kind):
    rng = np.random.default_rng(8)
    x = rnd(rng, B, 5, 8)
    activation = "gelu" if norm_first else "relu"
    eps = 1e-6 if norm_first else 1e-3
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=12,
                 norm_first=norm_first, activation=activation, epsilon=eps)
    call_numpy(block, (x,), {})
    random_weights_(block, rng, scale=0.4)
    kwargs, mask = _encoder_mask_case(mask_kind, rng)
    out, scores = call_numpy(block, (x,), kwargs, return_attention_scores=True)
    ref = np_encoder(block, x, mask, norm_first, activation, eps)
    np.testing.assert_allclose(out, ref, atol=1e-4 if not norm_first else ATOL)
    assert scores.shape == (B, 2, 5, 5)
    # Scores are those of the attention sublayer on its actual input.
    h = np_ln_of(block.norm1, x, eps) if norm_first else x
    _, ref_scores = np_mha(h, h, None, block.attention.get_weights(), mask=mask)
    np.testing.assert_allclose(scores, ref_scores, atol=ATOL)
    np.testing.assert_allclose(call_numpy(block, (x,), kwargs), out, atol=1e-6)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
@pytest.mark.parametrize("mask_kind", ["none", "valid_lens", "per_query_lens", "attention_mask",
                                       "key_mask", "one_axis_mask"])
@pytest.mark.parametrize("kept", [1, 3])
def test_encoder_block_num_output_tokens_gives_the_first_rows(norm_first, mask_kind, kept):
    # The first `kept` rows of the numpy block: those tokens still attend to all five.
    rng = np.random.default_rng(80 + kept)
    x = rnd(rng, B, 5, 8)
    activation = "gelu" if norm_first else "relu"
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=12, norm_first=norm_first,
                 activation=activation)
    call_numpy(block, (x,), {})
    random_weights_(block, rng, scale=0.4)
    kwargs, mask = _encoder_mask_case(mask_kind, rng)
    out, scores = call_numpy(block, (x,), kwargs, return_attention_scores=True,
                             num_output_tokens=kept)
    ref = np_encoder(block, x, mask, norm_first, activation, 1e-6)
    np.testing.assert_allclose(out, ref[:, :kept], atol=1e-4)
    full_scores = call_numpy(block, (x,), kwargs, return_attention_scores=True)[1]
    assert scores.shape == (B, 2, kept, 5)
    np.testing.assert_allclose(scores, full_scores[:, :, :kept], atol=ATOL)


def test_encoder_block_num_output_tokens_in_a_functional_model():
    tokens = keras.Input((5, 8))
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=12)
    out = block(tokens, num_output_tokens=2)
    assert tuple(out.shape) == (None, 2, 8)
    model = keras.Model(tokens, out)
    config = model.get_config()
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    x = rnd(np.random.default_rng(3), B, 5, 8)
    np.testing.assert_allclose(to_numpy(rebuilt(x)), to_numpy(model(x)), atol=1e-6)
    assert to_numpy(rebuilt(x)).shape == (B, 2, 8)
    # All five: the same as leaving it out; a numpy integer count works like an int.
    np.testing.assert_allclose(call_numpy(block, (x,), {}, num_output_tokens=5),
                               call_numpy(block, (x,), {}), atol=1e-6)
    np.testing.assert_allclose(to_numpy(block(x, num_output_tokens=np.int64(2))),
                               call_numpy(block, (x,), {})[:, :2], atol=1e-6)


@pytest.mark.parametrize("kept, needle", [(6, "num_output_tokens=6 exceeds the 5 tokens"),
                                          (0, "num_output_tokens"), (1.5, "num_output_tokens")])
def test_encoder_block_num_output_tokens_is_checked(kept, needle):
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=12)
    x = np.zeros((B, 5, 8), "float32")
    assert_value_error(lambda: call_numpy(block, (x,), {}, num_output_tokens=kept), needle)


def test_encoder_block_sublayers():
    rng = np.random.default_rng(9)
    x = rnd(rng, B, 4, 8)
    block = make("TransformerEncoderBlock", num_heads=4, mlp_dim=16)
    call_numpy(block, (x,), {})
    assert isinstance(block.attention, keras.layers.Layer)
    assert type(block.attention).__name__ == "MultiHeadAttention"
    assert type(block.attention).__module__.startswith("keras_vit")
    assert [tuple(w.shape) for w in block.attention.weights][:2] == [(8, 4, 2), (4, 2)]
    assert isinstance(block.norm1, keras.layers.LayerNormalization)
    assert isinstance(block.norm2, keras.layers.LayerNormalization)
    assert type(block.mlp).__name__ == "PositionWiseFeedForward"
    assert tuple(block.mlp.dense1.kernel.shape) == (8, 16)
    assert block.norm1.epsilon == pytest.approx(1e-6)


def test_encoder_block_training_flag_without_dropout_is_a_no_op():
    rng = np.random.default_rng(10)
    x = rnd(rng, B, 5, 8)
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16)
    ref = call_numpy(block, (x,), {"valid_lens": np.array([3, 5], "int32")}, training=False)
    out = call_numpy(block, (x,), {"valid_lens": np.array([3, 5], "int32")}, training=True)
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"dropout": 0.5}, {"attention_dropout": 0.5}, {"drop_path": 0.5}],
    ids=["dropout", "attention_dropout", "drop_path"],
)
def test_encoder_block_dropouts_act_in_training_only(kwargs):
    rng = np.random.default_rng(11)
    x = rnd(rng, 4, 5, 8)
    plain = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16)
    noisy = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16, **kwargs)
    ref = call_numpy(plain, (x,), {})
    call_numpy(noisy, (x,), {})
    noisy.set_weights(plain.get_weights())
    np.testing.assert_allclose(call_numpy(noisy, (x,), {}, training=False), ref, atol=1e-6)
    outs = [call_numpy(noisy, (x,), {}, training=True) for _ in range(3)]
    assert all(np.all(np.isfinite(o)) for o in outs)
    assert any(not np.allclose(o, ref, atol=1e-4) for o in outs)


def test_encoder_block_is_permutation_equivariant():
    rng = np.random.default_rng(12)
    x = rnd(rng, B, 6, 8)
    for norm_first in (True, False):
        block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16,
                     norm_first=norm_first)
        out = call_numpy(block, (x,), {})
        perm = np.array([2, 5, 0, 4, 1, 3])
        np.testing.assert_allclose(call_numpy(block, (x[:, perm],), {}), out[:, perm],
                                   atol=ATOL)


def test_encoder_block_valid_lens_equals_attention_mask():
    rng = np.random.default_rng(13)
    x = rnd(rng, B, 5, 8)
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16)
    vl = np.array([2, 4], "int32")
    a = call_numpy(block, (x,), {"valid_lens": vl})
    b = call_numpy(block, (x,), {"attention_mask": np_valid_lens_mask(vl, 5, 5)})
    np.testing.assert_allclose(a, b, atol=1e-6)
    # Padded tokens do not influence the valid ones.
    x2 = x.copy()
    x2[0, 2:] = 7.0
    c = call_numpy(block, (x2,), {"valid_lens": vl})
    np.testing.assert_allclose(c[0, :2], a[0, :2], atol=ATOL)


@pytest.mark.parametrize("dtype", ["mixed_float16", "float16"])
def test_encoder_block_fully_masked_rows_are_finite(dtype):
    rng = np.random.default_rng(14)
    x = rnd(rng, B, 4, 8)
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=16,
                 dtype=keras.DTypePolicy(dtype))
    out = call_numpy(block, (x,), {"valid_lens": np.array([[0, 2, 4, 0], [4, 0, 1, 3]], "int32")})
    assert np.all(np.isfinite(out.astype("float32")))


@pytest.mark.parametrize("d,heads", [(10, 4), (8, 3), (6, 4)])
def test_encoder_block_width_not_divisible_by_heads(d, heads):
    block = make("TransformerEncoderBlock", num_heads=heads, mlp_dim=8)
    x = np.zeros((B, 3, d), "float32")
    assert_value_error(lambda: call_numpy(block, (x,), {}), heads)


# ----------------------------------------------------------------------------
# TransformerDecoderBlock
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("mask_kind", ["none", "encoder_valid_lens", "all_masks"])
def test_decoder_block_matches_numpy(norm_first, mask_kind):
    rng = np.random.default_rng(15)
    t, s = 4, 5
    x, enc = rnd(rng, B, t, 8), rnd(rng, B, s, 8)
    block = make("TransformerDecoderBlock", num_heads=2, mlp_dim=12, norm_first=norm_first)
    call_numpy(block, (x, enc), {})
    random_weights_(block, rng, scale=0.4)
    kwargs = {}
    self_mask = np.broadcast_to(np_causal_mask(t, t), (B, t, t))
    cross_mask = None
    if mask_kind in ("encoder_valid_lens", "all_masks"):
        kwargs["encoder_valid_lens"] = np.array([2, 5], "int32")
        cross_mask = np_valid_lens_mask(kwargs["encoder_valid_lens"], t, s)
    if mask_kind == "all_masks":
        enc_mask = rng.random((B, t, s)) > 0.3
        enc_mask[:, :, 0] = True
        kwargs["encoder_attention_mask"] = enc_mask
        cross_mask = cross_mask & enc_mask
        sa_mask = rng.random((B, t, t)) > 0.3
        sa_mask[:, :, 0] = True
        kwargs["self_attention_mask"] = sa_mask
        self_mask = self_mask & sa_mask
    out = call_numpy(block, (x, enc), kwargs)
    ref = np_decoder(block, x, enc, self_mask, cross_mask, norm_first, "relu", 1e-6)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_decoder_block_sublayers():
    rng = np.random.default_rng(16)
    block = make("TransformerDecoderBlock", num_heads=2, mlp_dim=16)
    call_numpy(block, (rnd(rng, B, 3, 8), rnd(rng, B, 5, 6)), {})
    for name in ("self_attention", "cross_attention"):
        assert type(getattr(block, name)).__name__ == "MultiHeadAttention"
    for name in ("norm1", "norm2", "norm3"):
        assert isinstance(getattr(block, name), keras.layers.LayerNormalization)
    assert type(block.mlp).__name__ == "PositionWiseFeedForward"
    # Cross-attention keys/values come from the encoder (width 6).
    assert tuple(block.cross_attention.weights[2].shape)[0] == 6
    assert tuple(block.cross_attention.weights[4].shape)[0] == 6


def test_decoder_block_is_causal():
    rng = np.random.default_rng(17)
    t = 5
    x, enc = rnd(rng, B, t, 8), rnd(rng, B, 4, 8)
    block = make("TransformerDecoderBlock", num_heads=2, mlp_dim=16)
    base = call_numpy(block, (x, enc), {})
    for step in range(t - 1):
        x2 = x.copy()
        x2[:, step + 1:] = rnd(rng, B, t - step - 1, 8) * 3.0
        out = call_numpy(block, (x2, enc), {})
        np.testing.assert_allclose(out[:, : step + 1], base[:, : step + 1], atol=ATOL)
        assert not np.allclose(out[:, step + 1:], base[:, step + 1:], atol=1e-4)
    # The encoder outputs, on the other hand, are seen by every position.
    out = call_numpy(block, (x, enc + 1.0), {})
    assert not np.allclose(out[:, 0], base[:, 0], atol=1e-4)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("extra_length", [0, 2])
def test_decoder_cached_decoding_matches_full_pass(norm_first, extra_length):
    rng = np.random.default_rng(18)
    t, s, d, heads = 5, 4, 8, 2
    x, enc = rnd(rng, B, t, d), rnd(rng, B, s, d)
    evl = np.array([2, 4], "int32")
    block = make("TransformerDecoderBlock", num_heads=heads, mlp_dim=16,
                 norm_first=norm_first)
    call_numpy(block, (x, enc), {"encoder_valid_lens": evl})
    random_weights_(block, rng, scale=0.4)
    full = call_numpy(block, (x, enc), {"encoder_valid_lens": evl})

    cache = block.init_cache(B, t + extra_length)
    assert tuple(cache.shape) == (B, 2, t + extra_length, heads, d // heads)
    assert np.all(to_numpy(cache) == 0)
    steps = []
    for i in range(t):
        out_t, cache = call_layer(
            block, (x[:, i:i + 1], enc),
            {"encoder_valid_lens": evl, "self_attention_cache": cache,
             "cache_update_index": i},
        )
        assert tuple(out_t.shape) == (B, 1, d)
        assert tuple(cache.shape) == (B, 2, t + extra_length, heads, d // heads)
        steps.append(to_numpy(out_t))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL)


@pytest.mark.parametrize("y_shape", [(B, 5, 4), (B, 3, 8), (B, 5, 8, 1), (1, 5, 8)])
def test_add_norm_requires_y_shaped_like_x(y_shape):
    x, y = np.zeros((B, 5, 8), "float32"), np.zeros(y_shape, "float32")
    assert_value_error(lambda: call_numpy(make("AddNorm"), (x, y), {}),
                       "`y`", "`x`", y_shape, (B, 5, 8))
    layer = make("AddNorm")
    call_numpy(layer, (x, x), {})  # built; a later call is checked as well
    assert_value_error(lambda: call_numpy(layer, (x, y), {}), y_shape)


@pytest.mark.parametrize("kwargs, needles", [
    ({"valid_lens": np.array([1, 2, 3], "int32")}, ("valid_lens", (3,))),
    ({"attention_mask": np.ones((B, 4, 4), bool)}, ("attention_mask", (B, 4, 4))),
])
def test_encoder_block_mask_shapes_are_checked(kwargs, needles):
    block = make("TransformerEncoderBlock", num_heads=2, mlp_dim=8)
    x = np.zeros((B, 5, 4), "float32")
    assert_value_error(lambda: call_numpy(block, (x,), kwargs), *needles)


def test_decoder_block_encoder_batch_is_checked():
    block = make("TransformerDecoderBlock", num_heads=2, mlp_dim=8)
    x, enc = np.zeros((B, 3, 4), "float32"), np.zeros((1, 5, 4), "float32")
    assert_value_error(lambda: call_numpy(block, (x, enc), {}), "batch size", (1, 5, 4))


@pytest.mark.parametrize("index, steps", [(7, 1), (3, 1), (2, 2), (-1, 1)])
def test_decoder_cache_index_past_the_cache_is_an_error(index, steps):
    block = make("TransformerDecoderBlock", num_heads=2, mlp_dim=8)
    enc = np.zeros((B, 4, 4), "float32")
    call_numpy(block, (np.zeros((B, 1, 4), "float32"), enc), {})
    cache = block.init_cache(B, 3)
    x = np.zeros((B, steps, 4), "float32")
    assert_value_error(
        lambda: call_numpy(block, (x, enc), {"self_attention_cache": cache,
                                             "cache_update_index": index}),
        "cache_update_index", index, f"{steps} step", "length 3")
    # Numpy integers straight into the layer (Keras makes them tensors before `call`).
    for numpy_index in (np.int64(index), np.array(index, "int32")):
        assert_value_error(
            lambda i=numpy_index: block(x, enc, self_attention_cache=cache, cache_update_index=i),
            f"cache_update_index={index}", f"{steps} step", "length 3")
    # The last positions that fit are fine.
    out, new_cache = call_numpy(block, (x, enc), {"self_attention_cache": cache,
                                                  "cache_update_index": 3 - steps})
    assert out.shape == (B, steps, 4) and new_cache.shape == tuple(cache.shape)
    # A numpy integer index (an int64 tensor once Keras converts it) works as well.
    out64, _ = call_numpy(block, (x, enc), {"self_attention_cache": cache,
                                            "cache_update_index": np.int64(3 - steps)})
    np.testing.assert_allclose(out64, out, atol=1e-6)


@pytest.mark.parametrize("d,heads", [(10, 4), (6, 4)])
def test_decoder_block_width_not_divisible_by_heads(d, heads):
    block = make("TransformerDecoderBlock", num_heads=heads, mlp_dim=8)
    x = np.zeros((B, 3, d), "float32")
    assert_value_error(lambda: call_numpy(block, (x, x), {}), heads)


# ----------------------------------------------------------------------------
# Signatures from the spec
# ----------------------------------------------------------------------------
_BLOCK = [
    ("num_heads", REQUIRED), ("mlp_dim", REQUIRED), ("dropout", 0.0),
    ("attention_dropout", 0.0), ("drop_path", 0.0),
]
SIGNATURES = {
    "PositionWiseFeedForward": (
        [("hidden_dim", REQUIRED), ("activation", "gelu"), ("dropout", 0.0)],
        [("training", None)], 1,
    ),
    "AddNorm": ([("dropout", 0.0), ("epsilon", 1e-6)], [("training", None)], 2),
    "DropPath": ([("rate", REQUIRED)], [("training", None)], 1),
    "TransformerEncoderBlock": (
        _BLOCK + [("norm_first", True), ("activation", "gelu"), ("epsilon", 1e-6)],
        [("attention_mask", None), ("valid_lens", None),
         ("return_attention_scores", False), ("training", None)], 1,
    ),
    "TransformerDecoderBlock": (
        _BLOCK + [("norm_first", False), ("activation", "relu"), ("epsilon", 1e-6)],
        [("encoder_valid_lens", None), ("encoder_attention_mask", None),
         ("self_attention_mask", None), ("self_attention_cache", None),
         ("cache_update_index", None), ("return_attention_scores", False),
         ("training", None)], 2,
    ),
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signatures_follow_the_spec(name):
    init_spec, call_spec, n_inputs = SIGNATURES[name]
    cls = layer_class(name)
    assert issubclass(cls, keras.layers.Layer)
    assert_signature(cls.__init__, init_spec)
    assert_signature(cls.call, call_spec, skip=n_inputs)


# ----------------------------------------------------------------------------
# Constructor validation
# ----------------------------------------------------------------------------
def _enc(**kw):
    return lambda: make("TransformerEncoderBlock", **{"num_heads": 2, "mlp_dim": 8, **kw})


def _dec(**kw):
    return lambda: make("TransformerDecoderBlock", **{"num_heads": 2, "mlp_dim": 8, **kw})


BAD_CONSTRUCTORS = [
    ("ffn_hidden_0", lambda: make("PositionWiseFeedForward", hidden_dim=0), 0),
    ("ffn_hidden_neg", lambda: make("PositionWiseFeedForward", hidden_dim=-3), -3),
    ("ffn_dropout_1", lambda: make("PositionWiseFeedForward", hidden_dim=4, dropout=1.0), 1.0),
    ("ffn_dropout_neg",
     lambda: make("PositionWiseFeedForward", hidden_dim=4, dropout=-0.3), -0.3),
    ("addnorm_dropout_1", lambda: make("AddNorm", dropout=1.0), 1.0),
    ("addnorm_dropout_neg", lambda: make("AddNorm", dropout=-0.1), -0.1),
    ("droppath_1", lambda: make("DropPath", rate=1.0), 1.0),
    ("droppath_big", lambda: make("DropPath", rate=1.5), 1.5),
    ("droppath_neg", lambda: make("DropPath", rate=-0.1), -0.1),
    ("enc_heads_0", _enc(num_heads=0), 0),
    ("enc_heads_neg", _enc(num_heads=-2), -2),
    ("enc_mlp_0", _enc(mlp_dim=0), 0),
    ("enc_mlp_neg", _enc(mlp_dim=-16), -16),
    ("enc_dropout_1", _enc(dropout=1.0), 1.0),
    ("enc_attention_dropout_neg", _enc(attention_dropout=-0.5), -0.5),
    ("enc_drop_path_1", _enc(drop_path=1.0), 1.0),
    ("enc_drop_path_neg", _enc(drop_path=-0.2), -0.2),
    ("dec_heads_0", _dec(num_heads=0), 0),
    ("dec_heads_neg", _dec(num_heads=-3), -3),
    ("dec_mlp_neg", _dec(mlp_dim=-5), -5),
    ("dec_dropout_1", _dec(dropout=1.0), 1.0),
    ("dec_attention_dropout_big", _dec(attention_dropout=1.5), 1.5),
    ("dec_drop_path_neg", _dec(drop_path=-0.7), -0.7),
    ("enc_epsilon_neg", _enc(epsilon=-1e-6), -1e-6),
    ("enc_epsilon_0", _enc(epsilon=0.0), 0.0),
    ("enc_epsilon_str", _enc(epsilon="small"), "small"),
    ("enc_epsilon_inf", _enc(epsilon=float("inf")), "inf"),
    ("dec_epsilon_neg", _dec(epsilon=-1e-3), -1e-3),
    ("dec_epsilon_nan", _dec(epsilon=float("nan")), "nan"),
    ("addnorm_epsilon_neg", lambda: make("AddNorm", epsilon=-1e-6), -1e-6),
    ("addnorm_epsilon_str", lambda: make("AddNorm", epsilon="1e-6"), "1e-6"),
    ("enc_activation_unknown", _enc(activation="nope"), "nope"),
    ("dec_activation_unknown", _dec(activation="nope"), "nope"),
    ("ffn_activation_unknown",
     lambda: make("PositionWiseFeedForward", hidden_dim=4, activation="nope"), "nope"),
    ("enc_heads_float", _enc(num_heads=2.0), 2.0),
    ("enc_heads_bool", _enc(num_heads=True), True),
]


@pytest.mark.parametrize(
    "factory,bad", [c[1:] for c in BAD_CONSTRUCTORS], ids=[c[0] for c in BAD_CONSTRUCTORS]
)
def test_constructor_rejects_bad_arguments(factory, bad):
    assert_value_error(factory, bad)


@pytest.mark.parametrize("name, factory", [
    ("epsilon", _enc(epsilon=-1e-6)), ("epsilon", lambda: make("AddNorm", epsilon="x")),
    ("activation", _dec(activation="nope")),
])
def test_bad_arguments_are_named(name, factory):
    assert_value_error(factory, f"`{name}`")


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    block = make("TransformerEncoderBlock", num_heads=np.int64(2), mlp_dim=np.int32(8),
                 dropout=np.float32(0.25), epsilon=np.float64(1e-5))
    assert (type(block.num_heads), type(block.mlp_dim)) == (int, int)
    assert (type(block.dropout), type(block.epsilon)) == (float, float)
    x = np.zeros((B, 3, 4), "float32")
    assert call_numpy(block, (x,), {}).shape == (B, 3, 4)
    keras.saving.serialize_keras_object(block)  # JSON-able config
    assert type(make("AddNorm", epsilon=np.float32(1e-3)).epsilon) is float
    assert type(make("PositionWiseFeedForward", hidden_dim=np.int16(4)).hidden_dim) is int
