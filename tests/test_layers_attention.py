"""Tests for the attention layers of keras_vit.layers, written from the spec.

NadarayaWatsonAttention, AdditiveAttention, ScaledDotProductAttention and
MultiHeadAttention against numpy references (and keras' MultiHeadAttention),
masking semantics, causality, permutation equivariance, constructor checks;
the generic build / serialization / precision / gradient checks come from
``layer_harness``.
"""

import math

import keras
import numpy as np
import pytest

from layer_harness import (  # noqa: F401  (fixture is autouse)
    REQUIRED,
    LayerCase,
    _restore_global_state,
    assert_signature,
    assert_value_error,
    call_numpy,
    harness_tests,
    layer_class,
    layer_gradients,
    make,
    np_causal_mask,
    np_masked_softmax,
    np_mha,
    np_valid_lens_mask,
    random_weights_,
    rnd,
    to_numpy,
    to_tensor,
)

B = 2
ATOL = 1e-5



# ----------------------------------------------------------------------------
# Generic harness cases
# ----------------------------------------------------------------------------
def _qvk(tq, tk, dq, dv, dk=None, **extra):
    dk = dq if dk is None else dk

    def make_inputs(rng):
        q, v, k = rnd(rng, B, tq, dq), rnd(rng, B, tk, dv), rnd(rng, B, tk, dk)
        kwargs = {"key": k}
        for name, value in extra.items():
            kwargs[name] = value(rng) if callable(value) else value
        return (q, v), kwargs

    return make_inputs


def _self(t, d, **extra):
    def make_inputs(rng):
        x = rnd(rng, B, t, d)
        kwargs = {}
        for name, value in extra.items():
            kwargs[name] = value(rng) if callable(value) else value
        return (x, x), kwargs

    return make_inputs


def _vl(*values):
    return lambda rng: np.array(values, dtype="int32")


def _mha_key_bias(layer):
    return [layer.weights[3]] if layer.use_bias else []


CASES = [
    LayerCase(
        "nw_scalar", "NadarayaWatsonAttention", {},
        _qvk(4, 5, 1, 1), [(B, 4, 1)],
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=1,
    ),
    LayerCase(
        "nw_vector_scores_masked", "NadarayaWatsonAttention",
        {"initial_bandwidth": 0.7},
        _qvk(3, 5, 3, 2, return_attention_scores=True, valid_lens=_vl(2, 5)),
        [(B, 3, 2), (B, 3, 5)],
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=1,
    ),
    LayerCase(
        "nw_trainable", "NadarayaWatsonAttention",
        {"trainable_bandwidth": True, "initial_bandwidth": 1.3},
        _qvk(4, 6, 2, 3), [(B, 4, 3)],
        expected_num_trainable_weights=1, expected_num_non_trainable_weights=0,
    ),
    LayerCase(
        "nw_dropout", "NadarayaWatsonAttention", {"dropout": 0.5, "initial_bandwidth": 0.9},
        _qvk(3, 4, 2, 2), [(B, 3, 2)],
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=1,
    ),
    LayerCase(
        "additive", "AdditiveAttention", {"units": 8},
        _qvk(3, 5, 6, 4, dk=5, valid_lens=_vl(3, 5)), [(B, 3, 4)],
        expected_num_trainable_weights=3,
    ),
    LayerCase(
        "additive_scores_mask", "AdditiveAttention", {"units": 6, "dropout": 0.2},
        _qvk(
            4, 4, 5, 3, return_attention_scores=True,
            attention_mask=lambda rng: np.tril(np.ones((B, 4, 4), bool)),
        ),
        [(B, 4, 3), (B, 4, 4)],
        expected_num_trainable_weights=3,
    ),
    LayerCase(
        "sdpa", "ScaledDotProductAttention", {},
        _qvk(3, 5, 4, 6, valid_lens=lambda rng: np.array([[1, 2, 5], [5, 4, 3]], "int32")),
        [(B, 3, 6)],
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
    ),
    LayerCase(
        "sdpa_causal_scores", "ScaledDotProductAttention", {"dropout": 0.1},
        _self(5, 4, use_causal_mask=True, return_attention_scores=True),
        [(B, 5, 4), (B, 5, 5)],
        expected_num_trainable_weights=0,
    ),
    LayerCase(
        "mha_self", "MultiHeadAttention", {"num_heads": 2, "key_dim": 4},
        _self(5, 8), [(B, 5, 8)],
        expected_num_trainable_weights=8, zero_grad_ok=_mha_key_bias,
    ),
    LayerCase(
        "mha_cross_scores", "MultiHeadAttention",
        {"num_heads": 2, "key_dim": 4, "value_dim": 3, "output_shape": 12},
        _qvk(3, 5, 6, 10, dk=7, return_attention_scores=True, valid_lens=_vl(4, 5)),
        [(B, 3, 12), (B, 2, 3, 5)],
        expected_num_trainable_weights=8, zero_grad_ok=_mha_key_bias,
    ),
    LayerCase(
        "mha_causal_nobias", "MultiHeadAttention",
        {"num_heads": 3, "key_dim": 2, "use_bias": False, "dropout": 0.1},
        _self(6, 6, use_causal_mask=True, valid_lens=_vl(4, 6)), [(B, 6, 6)],
        expected_num_trainable_weights=4,
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
# Shared helpers for the attention-specific tests
# ----------------------------------------------------------------------------
def attend(layer, q, v, k=None, **kwargs):
    """Call with return_attention_scores=True; numpy (out, weights)."""
    if k is not None:
        kwargs["key"] = k
    out, w = call_numpy(layer, (q, v), kwargs, return_attention_scores=True)
    # The output must not depend on whether the scores are requested (a
    # layer may take a fused path without them).
    out_only = call_numpy(layer, (q, v), kwargs)
    ref = out.astype("float32")
    tol = ATOL if layer.compute_dtype == "float32" else 2e-2 * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(
        out_only.astype("float32"), ref, atol=tol,
        err_msg="output differs with / without return_attention_scores",
    )
    return out, w


def per_head(w):
    """Attention weights as (B, H, Tq, Tk) (H=1 for single-head layers)."""
    return w if w.ndim == 4 else w[:, None]


ATTENTION_FACTORIES = {
    "nw": lambda **kw: make("NadarayaWatsonAttention", initial_bandwidth=0.8, **kw),
    "additive": lambda **kw: make("AdditiveAttention", units=6, **kw),
    "sdpa": lambda **kw: make("ScaledDotProductAttention", **kw),
    "mha": lambda **kw: make("MultiHeadAttention", num_heads=2, key_dim=3, **kw),
}
attention_factories = pytest.mark.parametrize(
    "factory", list(ATTENTION_FACTORIES.values()), ids=list(ATTENTION_FACTORIES)
)


def qvk(rng, tq=4, tk=5, d=4, dv=3):
    return rnd(rng, B, tq, d), rnd(rng, B, tk, dv), rnd(rng, B, tk, d)


# ----------------------------------------------------------------------------
# Nadaraya-Watson attention
# ----------------------------------------------------------------------------
def np_nw(q, v, k, w, mask=None):
    d2 = ((q[:, :, None, :].astype(np.float64) - k[:, None, :, :]) ** 2).sum(-1)
    weights = np_masked_softmax(-0.5 * w**2 * d2, mask)
    return weights @ v, weights


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("dims", [(1, 1), (3, 2)], ids=["scalar", "vector"])
def test_nadaraya_watson_matches_numpy(dims, trainable):
    d, dv = dims
    rng = np.random.default_rng(0)
    q, v, k = qvk(rng, tq=4, tk=6, d=d, dv=dv)
    layer = make(
        "NadarayaWatsonAttention", trainable_bandwidth=trainable, initial_bandwidth=1.7
    )
    out, w = attend(layer, q, v, k)
    assert len(layer.weights) == 1 and int(np.prod(layer.weights[0].shape)) == 1
    bw = float(to_numpy(layer.weights[0]).reshape(()))
    assert bw == pytest.approx(1.7)
    ref_out, ref_w = np_nw(q, v, k, bw)
    np.testing.assert_allclose(w, ref_w, atol=ATOL)
    np.testing.assert_allclose(out, ref_out, atol=ATOL)
    assert out.shape == (B, 4, dv) and w.shape == (B, 4, 6)

    # Key defaults to value.
    out2, w2 = attend(layer, q, k)
    np.testing.assert_allclose(out2, np_nw(q, k, k, bw)[0], atol=ATOL)

    # After changing the bandwidth the formula still holds.
    layer.weights[0].assign(np.full(tuple(layer.weights[0].shape), -0.4, "float32"))
    out3, _ = attend(layer, q, v, k, valid_lens=np.array([3, 6], "int32"))
    ref3, _ = np_nw(q, v, k, -0.4, np_valid_lens_mask([3, 6], 4, 6))
    np.testing.assert_allclose(out3, ref3, atol=ATOL)


@pytest.mark.parametrize("trainable", [False, True])
def test_nadaraya_watson_bandwidth_weight(trainable):
    layer = make("NadarayaWatsonAttention", trainable_bandwidth=trainable)
    rng = np.random.default_rng(1)
    q, v, k = qvk(rng)
    attend(layer, q, v, k)
    if trainable:
        assert len(layer.trainable_weights) == 1
        assert not layer.non_trainable_weights
    else:
        assert not layer.trainable_weights
        assert len(layer.non_trainable_weights) == 1
    assert float(to_numpy(layer.weights[0]).reshape(())) == pytest.approx(1.0)


# ----------------------------------------------------------------------------
# Additive attention
# ----------------------------------------------------------------------------
def np_additive(q, v, k, wq, wk, wv, mask=None):
    feats = np.tanh((q @ wq)[:, :, None, :].astype(np.float64) + (k @ wk)[:, None, :, :])
    scores = (feats @ wv)[..., 0]
    weights = np_masked_softmax(scores, mask)
    return weights @ v, weights


@pytest.mark.parametrize("masked", [False, True])
def test_additive_attention_matches_numpy(masked):
    rng = np.random.default_rng(2)
    q, v, k = rnd(rng, B, 3, 6), rnd(rng, B, 5, 4), rnd(rng, B, 5, 7)
    layer = make("AdditiveAttention", units=8)
    kwargs = {"valid_lens": np.array([2, 4], "int32")} if masked else {}
    out, w = attend(layer, q, v, k, **kwargs)
    wq = to_numpy(layer.query_dense.kernel)
    wk = to_numpy(layer.key_dense.kernel)
    wv = to_numpy(layer.score_dense.kernel)
    assert wq.shape == (6, 8) and wk.shape == (7, 8) and wv.shape == (8, 1)
    assert len(layer.weights) == 3, [x.path for x in layer.weights]  # no biases
    mask = np_valid_lens_mask([2, 4], 3, 5) if masked else None
    ref_out, ref_w = np_additive(q, v, k, wq, wk, wv, mask)
    np.testing.assert_allclose(w, ref_w, atol=ATOL)
    np.testing.assert_allclose(out, ref_out, atol=ATOL)


def test_additive_attention_dropout_only_in_training():
    rng = np.random.default_rng(3)
    q, v, k = rnd(rng, B, 4, 5), rnd(rng, B, 6, 3), rnd(rng, B, 6, 5)
    plain = make("AdditiveAttention", units=8)
    drop = make("AdditiveAttention", units=8, dropout=0.5)
    ref = call_numpy(plain, (q, v), {"key": k})
    call_numpy(drop, (q, v), {"key": k})
    drop.set_weights(plain.get_weights())
    np.testing.assert_allclose(call_numpy(drop, (q, v), {"key": k}), ref, atol=1e-6)
    np.testing.assert_allclose(
        call_numpy(drop, (q, v), {"key": k}, training=False), ref, atol=1e-6
    )
    trained = call_numpy(drop, (q, v), {"key": k}, training=True)
    assert np.all(np.isfinite(trained))
    assert not np.allclose(trained, ref, atol=1e-4)
    # The plain layer is deterministic in training as well.
    np.testing.assert_allclose(
        call_numpy(plain, (q, v), {"key": k}, training=True), ref, atol=1e-6
    )


# ----------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------
def np_sdpa(q, v, k, mask=None):
    scores = np.einsum("bqd,bkd->bqk", q.astype(np.float64), k) / math.sqrt(q.shape[-1])
    weights = np_masked_softmax(scores, mask)
    return weights @ v, weights


@pytest.mark.parametrize("mask_kind", ["none", "valid_lens", "causal"])
def test_scaled_dot_product_matches_numpy(mask_kind):
    rng = np.random.default_rng(4)
    q, v, k = rnd(rng, B, 5, 6), rnd(rng, B, 5, 3), rnd(rng, B, 5, 6)
    layer = make("ScaledDotProductAttention")
    kwargs, mask = {}, None
    if mask_kind == "valid_lens":
        kwargs["valid_lens"] = np.array([2, 5], "int32")
        mask = np_valid_lens_mask([2, 5], 5, 5)
    elif mask_kind == "causal":
        kwargs["use_causal_mask"] = True
        mask = np_causal_mask(5, 5)[None]
    out, w = attend(layer, q, v, k, **kwargs)
    assert not layer.weights
    ref_out, ref_w = np_sdpa(q, v, k, mask)
    np.testing.assert_allclose(w, ref_w, atol=ATOL)
    np.testing.assert_allclose(out, ref_out, atol=ATOL)


def test_scaled_dot_product_uses_query_size_for_scaling():
    # d = 16 here: a 1/sqrt(d) error (e.g. sqrt of Tk or of Dv) shows up.
    rng = np.random.default_rng(5)
    q, v, k = rnd(rng, B, 2, 16), rnd(rng, B, 3, 5), rnd(rng, B, 3, 16)
    out, w = attend(make("ScaledDotProductAttention"), q, v, k)
    np.testing.assert_allclose(w, np_sdpa(q, v, k)[1], atol=ATOL)


# ----------------------------------------------------------------------------
# Multi-head attention: parity with keras.layers.MultiHeadAttention
# ----------------------------------------------------------------------------
MHA_PARITY = {
    "self": dict(init={"num_heads": 2, "key_dim": 4}, tq=5, tk=5, dq=8, dv=8, dk=None),
    "cross": dict(
        init={"num_heads": 2, "key_dim": 3, "value_dim": 5}, tq=3, tk=6, dq=6, dv=10, dk=7
    ),
    "padding_mask": dict(init={"num_heads": 2, "key_dim": 4}, tq=4, tk=6, dq=8, dv=8,
                         dk=None, mask="padding"),
    "causal": dict(init={"num_heads": 4, "key_dim": 2}, tq=5, tk=5, dq=8, dv=8, dk=None,
                   causal=True),
    "causal_and_padding": dict(init={"num_heads": 2, "key_dim": 4}, tq=5, tk=5, dq=8,
                               dv=8, dk=None, causal=True, mask="padding"),
    "output_shape": dict(init={"num_heads": 2, "key_dim": 4, "output_shape": 12},
                         tq=4, tk=5, dq=8, dv=6, dk=None),
    "no_bias": dict(init={"num_heads": 3, "key_dim": 2, "use_bias": False}, tq=4, tk=4,
                    dq=6, dv=6, dk=None),
}


@pytest.mark.parametrize("name", list(MHA_PARITY))
def test_mha_matches_keras_multi_head_attention(name):
    p = MHA_PARITY[name]
    rng = np.random.default_rng(6)
    q = rnd(rng, B, p["tq"], p["dq"])
    v = q if name in ("self", "causal", "causal_and_padding") else rnd(rng, B, p["tk"], p["dv"])
    k = None if p["dk"] is None else rnd(rng, B, p["tk"], p["dk"])
    kwargs, ours_kwargs = {}, {}
    if p.get("mask") == "padding":
        vl = np.array([3, p["tk"]], "int32")
        kwargs["attention_mask"] = np_valid_lens_mask(vl, p["tq"], p["tk"])
        ours_kwargs["valid_lens"] = vl
    if p.get("causal"):
        kwargs["use_causal_mask"] = True
    if k is not None:
        kwargs["key"] = k

    ref_layer = keras.layers.MultiHeadAttention(**p["init"])
    call_numpy(ref_layer, (q, v), kwargs, return_attention_scores=True)
    random_weights_(ref_layer, rng, scale=0.4)
    ref_out, ref_scores = call_numpy(ref_layer, (q, v), kwargs, return_attention_scores=True)

    ours = make("MultiHeadAttention", **p["init"])
    call_numpy(ours, (q, v), kwargs, return_attention_scores=True)
    assert [tuple(w.shape) for w in ours.weights] == [
        tuple(w.shape) for w in ref_layer.weights
    ]
    ours.set_weights(ref_layer.get_weights())
    out, scores = call_numpy(ours, (q, v), kwargs, return_attention_scores=True)
    np.testing.assert_allclose(scores, ref_scores, atol=ATOL)
    np.testing.assert_allclose(out, ref_out, atol=ATOL)
    # Without return_attention_scores: just the output.
    np.testing.assert_allclose(call_numpy(ours, (q, v), kwargs), ref_out, atol=ATOL)

    if ours_kwargs:  # valid_lens gives the same as the boolean mask
        kw = {k2: v2 for k2, v2 in kwargs.items() if k2 != "attention_mask"}
        out2, scores2 = call_numpy(
            ours, (q, v), {**kw, **ours_kwargs}, return_attention_scores=True
        )
        np.testing.assert_allclose(scores2, ref_scores, atol=ATOL)
        np.testing.assert_allclose(out2, ref_out, atol=ATOL)


def _keras_and_ours_mha(rng, init, args, kwargs):
    """Keras' MultiHeadAttention with random weights, and ours with the same weights.

    Both are built by a call on `args` / `kwargs`.
    """
    ref_layer = keras.layers.MultiHeadAttention(**init)
    call_numpy(ref_layer, args, kwargs)
    random_weights_(ref_layer, rng, scale=0.4)
    ours = make("MultiHeadAttention", **init)
    call_numpy(ours, args, kwargs)
    ours.set_weights(ref_layer.get_weights())
    return ref_layer, ours


MHA_GRADIENT_CASES = {
    **{name: MHA_PARITY[name] for name in ("self", "output_shape", "no_bias")},
    # value_dim == key_dim: Keras' layer fails under jax.jit otherwise.
    "cross": dict(init={"num_heads": 2, "key_dim": 3}, tq=3, tk=6, dq=6, dv=10, dk=7),
}


@pytest.mark.parametrize("name", list(MHA_GRADIENT_CASES))
def test_mha_gradients_match_keras_multi_head_attention(name):
    # Our projections are 2-D matmuls over rows, Keras' are einsums: the
    # gradients w.r.t. every weight and input must still be Keras'.
    p = MHA_GRADIENT_CASES[name]
    rng = np.random.default_rng(16)
    q = rnd(rng, B, p["tq"], p["dq"])
    v = q if name == "self" else rnd(rng, B, p["tk"], p["dv"])
    kwargs = {} if p["dk"] is None else {"key": to_tensor(rnd(rng, B, p["tk"], p["dk"]))}
    ref_layer, ours = _keras_and_ours_mha(rng, p["init"], (q, v), kwargs)
    args = (to_tensor(q), to_tensor(v))
    projections = [rnd(rng, B, p["tq"], p["init"].get("output_shape", p["dq"]))]
    ref_weights, ref_inputs = layer_gradients(ref_layer, args, kwargs, projections)
    our_weights, our_inputs = layer_gradients(ours, args, kwargs, projections)
    for ref, got in zip(ref_weights + ref_inputs, our_weights + our_inputs, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_mha_lora_projections_match_keras():
    # A LoRA-enabled projection keeps EinsumDense's own call (kernel + A @ B).
    rng = np.random.default_rng(17)
    q = rnd(rng, B, 5, 8)
    ref_layer, ours = _keras_and_ours_mha(rng, {"num_heads": 2, "key_dim": 4}, (q, q), {})
    without_lora = call_numpy(ref_layer, (q, q), {})
    for layer in (ref_layer, ours):
        for dense in (layer.query_dense, layer.value_dense, layer.output_dense):
            dense.enable_lora(2)
    for ref_dense, our_dense in ((ref_layer.query_dense, ours.query_dense),
                                 (ref_layer.value_dense, ours.value_dense),
                                 (ref_layer.output_dense, ours.output_dense)):
        update = rng.normal(size=tuple(ref_dense.lora_kernel_b.shape)).astype("float32")
        ref_dense.lora_kernel_b.assign(update)
        our_dense.lora_kernel_b.assign(update)
        our_dense.lora_kernel_a.assign(ref_dense.lora_kernel_a)
    expected = call_numpy(ref_layer, (q, q), {})
    assert np.abs(expected - without_lora).max() > 1e-3  # the LoRA update counts
    np.testing.assert_allclose(call_numpy(ours, (q, q), {}), expected, atol=ATOL)


def test_mha_int8_quantized_matches_keras():
    # Quantized projections keep EinsumDense's quantized call: ours and Keras'
    # quantize and compute alike.
    rng = np.random.default_rng(18)
    q = rnd(rng, B, 5, 8)
    ref_layer, ours = _keras_and_ours_mha(rng, {"num_heads": 2, "key_dim": 4}, (q, q), {})
    models = []
    for layer in (ref_layer, ours):
        inputs = keras.Input((5, 8))
        model = keras.Model(inputs, layer(inputs, inputs))
        model.quantize("int8")
        models.append(model)
    assert ours.query_dense.quantization_mode == "int8"
    expected = to_numpy(models[0](q))
    np.testing.assert_allclose(to_numpy(models[1](q)), expected, atol=ATOL)


def test_mha_weight_shapes_and_order():
    rng = np.random.default_rng(7)
    layer = make("MultiHeadAttention", num_heads=3, key_dim=4, value_dim=5, output_shape=7)
    call_numpy(layer, (rnd(rng, B, 2, 6), rnd(rng, B, 3, 9)), {"key": rnd(rng, B, 3, 8)})
    assert [tuple(w.shape) for w in layer.weights] == [
        (6, 3, 4), (3, 4), (8, 3, 4), (3, 4), (9, 3, 5), (3, 5), (3, 5, 7), (7,)
    ]
    assert all(w.trainable for w in layer.weights)


@pytest.mark.parametrize("mask_kind", ["none", "valid_lens", "per_query", "causal"])
def test_mha_matches_numpy(mask_kind):
    rng = np.random.default_rng(8)
    tq = tk = 5
    x = rnd(rng, B, tq, 8)
    layer = make("MultiHeadAttention", num_heads=2, key_dim=3, value_dim=2)
    call_numpy(layer, (x, x), {})
    random_weights_(layer, rng, scale=0.5)
    kwargs, mask = {}, None
    if mask_kind == "valid_lens":
        kwargs["valid_lens"] = np.array([2, 5], "int32")
        mask = np_valid_lens_mask(kwargs["valid_lens"], tq, tk)
    elif mask_kind == "per_query":
        kwargs["valid_lens"] = np.array([[1, 2, 3, 4, 5], [5, 5, 2, 2, 1]], "int32")
        mask = np_valid_lens_mask(kwargs["valid_lens"], tq, tk)
    elif mask_kind == "causal":
        kwargs["use_causal_mask"] = True
        mask = np.broadcast_to(np_causal_mask(tq, tk), (B, tq, tk))
    out, scores = attend(layer, x, x, **kwargs)
    ref_out, ref_scores = np_mha(x, x, None, layer.get_weights(), mask=mask)
    assert scores.shape == (B, 2, tq, tk)
    np.testing.assert_allclose(scores, ref_scores, atol=ATOL)
    np.testing.assert_allclose(out, ref_out, atol=ATOL)


def test_mha_causal_output_ignores_future_tokens():
    rng = np.random.default_rng(9)
    x = rnd(rng, B, 6, 8)
    layer = make("MultiHeadAttention", num_heads=2, key_dim=4)
    base = call_numpy(layer, (x, x), {"use_causal_mask": True})
    for t in range(5):
        x2 = x.copy()
        x2[:, t + 1:] = rnd(rng, B, 6 - t - 1, 8) * 3.0
        out = call_numpy(layer, (x2, x2), {"use_causal_mask": True})
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=ATOL)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-4)


def test_mha_self_attention_is_permutation_equivariant():
    rng = np.random.default_rng(10)
    x = rnd(rng, B, 6, 8)
    layer = make("MultiHeadAttention", num_heads=2, key_dim=4)
    out = call_numpy(layer, (x, x), {})
    perm = np.array([3, 0, 5, 1, 4, 2])
    out_p = call_numpy(layer, (x[:, perm], x[:, perm]), {})
    np.testing.assert_allclose(out_p, out[:, perm], atol=ATOL)


def test_mha_dropout_only_in_training():
    rng = np.random.default_rng(11)
    x = rnd(rng, B, 5, 8)
    plain = make("MultiHeadAttention", num_heads=2, key_dim=4)
    drop = make("MultiHeadAttention", num_heads=2, key_dim=4, dropout=0.5)
    ref = call_numpy(plain, (x, x), {})
    call_numpy(drop, (x, x), {})
    drop.set_weights(plain.get_weights())
    np.testing.assert_allclose(call_numpy(drop, (x, x), {}, training=False), ref, atol=1e-6)
    trained = call_numpy(drop, (x, x), {}, training=True)
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, ref, atol=1e-4)


# ----------------------------------------------------------------------------
# Masking semantics, for every attention layer
# ----------------------------------------------------------------------------
@attention_factories
def test_masked_keys_get_zero_weight_and_valid_weights_sum_to_one(factory):
    rng = np.random.default_rng(12)
    q, v, k = qvk(rng)
    vl = np.array([2, 4], "int32")
    _, w = attend(factory(), q, v, k, valid_lens=vl)
    w = per_head(w)
    mask = np_valid_lens_mask(vl, 4, 5)[:, None]
    mask = np.broadcast_to(mask, w.shape)
    assert np.all(w[~mask] == 0.0), "masked keys must get exactly zero weight"
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=ATOL)
    assert np.all(w[mask] > 0)


@attention_factories
def test_valid_lens_and_attention_mask_forms_agree(factory):
    rng = np.random.default_rng(13)
    q, v, k = qvk(rng)
    layer = factory()
    vl = np.array([3, 1], "int32")
    bool_mask = np_valid_lens_mask(vl, 4, 5)
    variants = {
        "valid_lens_B": {"valid_lens": vl},
        "valid_lens_BTq": {"valid_lens": np.repeat(vl[:, None], 4, axis=1)},
        "bool_mask": {"attention_mask": bool_mask},
        "int_mask": {"attention_mask": bool_mask.astype("int32")},
        "float_mask": {"attention_mask": bool_mask.astype("float32")},
    }
    results = {n: attend(layer, q, v, k, **kw) for n, kw in variants.items()}
    ref_out, ref_w = results["bool_mask"]
    for name, (out, w) in results.items():
        np.testing.assert_allclose(w, ref_w, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(out, ref_out, atol=1e-6, err_msg=name)
    w = per_head(ref_w)
    assert np.all(w[np.broadcast_to(~bool_mask[:, None], w.shape)] == 0)


@attention_factories
def test_per_query_valid_lens(factory):
    rng = np.random.default_rng(14)
    q, v, k = qvk(rng)
    vl = np.array([[1, 2, 3, 5], [5, 4, 4, 2]], "int32")
    layer = factory()
    out, w = attend(layer, q, v, k, valid_lens=vl)
    mask = np_valid_lens_mask(vl, 4, 5)
    out2, w2 = attend(layer, q, v, k, attention_mask=mask)
    np.testing.assert_allclose(w, w2, atol=1e-6)
    np.testing.assert_allclose(out, out2, atol=1e-6)
    wh = per_head(w)
    assert np.all(wh[np.broadcast_to(~mask[:, None], wh.shape)] == 0)
    np.testing.assert_allclose(wh.sum(-1), 1.0, atol=ATOL)


@attention_factories
def test_masks_combine_by_and(factory):
    rng = np.random.default_rng(15)
    t = 5
    q, v, k = qvk(rng, tq=t, tk=t)
    layer = factory()
    att = rng.random((B, t, t)) > 0.3
    att[:, :, 0] = True  # every row keeps at least key 0
    vl = np.array([3, 4], "int32")
    causal = np_causal_mask(t, t)[None]
    combined = att & np_valid_lens_mask(vl, t, t)
    out, w = attend(layer, q, v, k, attention_mask=att, valid_lens=vl)
    ref_out, ref_w = attend(layer, q, v, k, attention_mask=combined)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)

    out, w = attend(layer, q, v, k, attention_mask=att, valid_lens=vl, use_causal_mask=True)
    ref_out, ref_w = attend(layer, q, v, k, attention_mask=combined & causal)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)


@attention_factories
def test_causal_mask_hides_future_keys(factory):
    rng = np.random.default_rng(16)
    q, v, k = qvk(rng, tq=5, tk=5)
    _, w = attend(factory(), q, v, k, use_causal_mask=True)
    w = per_head(w)
    future = np.broadcast_to(~np_causal_mask(5, 5), w.shape)
    assert np.all(w[future] == 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=ATOL)


@attention_factories
@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "mixed_float16", "mixed_bfloat16"]
)
def test_fully_masked_row_gives_zeros_not_nan(factory, dtype):
    rng = np.random.default_rng(17)
    q, v, k = qvk(rng)
    # Query row 1 of sequence 0 and row 3 of sequence 1 see no key at all.
    vl = np.array([[2, 0, 5, 3], [1, 5, 4, 0]], "int32")
    layer = factory(dtype=keras.DTypePolicy(dtype))
    out, w = attend(layer, q, v, k, valid_lens=vl)
    out = out.astype("float32")
    w = per_head(w.astype("float32"))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    mask = np.broadcast_to(np_valid_lens_mask(vl, 4, 5)[:, None], w.shape)
    assert np.all(w[~mask] == 0)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for b, i in [(0, 1), (1, 3)]:
        assert np.all(w[b, :, i] == 0)
        if isinstance(layer, layer_class("MultiHeadAttention")):
            # Zero context before the output projection -> output bias.
            bias = to_numpy(layer.weights[-1]).astype("float32")
            np.testing.assert_allclose(out[b, i], bias, atol=tol)
        else:
            np.testing.assert_array_equal(out[b, i], 0.0)
    # Other rows are normal: weights over valid keys sum to one.
    rows = [(0, 0), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    for b, i in rows:
        np.testing.assert_allclose(w[b, :, i].sum(-1), 1.0, atol=tol)

    # The same with an all-False boolean attention mask for a whole sequence.
    att = np.ones((B, 4, 5), bool)
    att[1] = False
    out, w = attend(layer, q, v, k, attention_mask=att)
    assert np.all(np.isfinite(out.astype("float32")))
    assert np.all(per_head(w.astype("float32"))[1] == 0)


# ----------------------------------------------------------------------------
# Mismatched inputs: a ValueError naming the argument and the shapes
# ----------------------------------------------------------------------------
def _x(*shape):
    return np.zeros(shape, "float32")


BAD_INPUTS = [
    # (id, (query, value), kwargs, needles)
    ("batch", (_x(B, 5, 4), _x(1, 5, 4)), {}, ("value", "query", (1, 5, 4), (B, 5, 4))),
    ("key_batch", (_x(B, 5, 4), _x(B, 5, 4)), {"key": _x(1, 5, 4)}, ("key", (1, 5, 4))),
    ("rank2", (_x(5, 4), _x(5, 4)), {}, ("query", (5, 4))),
    ("value_rank4", (_x(B, 5, 4), _x(B, 5, 4, 1)), {"key": _x(B, 5, 4)},
     ("value", (B, 5, 4, 1))),
    ("key_value_lengths", (_x(B, 5, 4), _x(B, 5, 4)), {"key": _x(B, 3, 4)},
     ("key", "value", (B, 3, 4), (B, 5, 4))),
    ("mask_key_length", (_x(B, 5, 4), _x(B, 5, 4)),
     {"attention_mask": np.ones((B, 5, 4), bool)}, ("attention_mask", (B, 5, 4), (B, 5, 5))),
    ("mask_batch", (_x(B, 5, 4), _x(B, 5, 4)),
     {"attention_mask": np.ones((3, 5, 5), bool)}, ("attention_mask", (3, 5, 5))),
    ("mask_rank4", (_x(B, 5, 4), _x(B, 5, 4)),
     {"attention_mask": np.ones((B, 1, 5, 5), bool)}, ("attention_mask", (B, 1, 5, 5))),
    ("valid_lens_batch", (_x(B, 5, 4), _x(B, 5, 4)),
     {"valid_lens": np.array([1, 2, 3], "int32")}, ("valid_lens", (3,), (B,))),
    ("valid_lens_queries", (_x(B, 5, 4), _x(B, 5, 4)),
     {"valid_lens": np.ones((B, 4), "int32")}, ("valid_lens", (B, 4), (B, 5))),
    ("valid_lens_rank3", (_x(B, 5, 4), _x(B, 5, 4)),
     {"valid_lens": np.ones((B, 5, 5), "int32")}, ("valid_lens", (B, 5, 5))),
]


@attention_factories
@pytest.mark.parametrize("args, kwargs, needles", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_mismatched_inputs_are_value_errors(factory, args, kwargs, needles):
    assert_value_error(lambda: call_numpy(factory(), args, kwargs), *needles)


@pytest.mark.parametrize("name", ["nw", "sdpa"])
def test_query_and_key_feature_sizes_must_match_for_distance_and_dot_scores(name):
    q, v, k = _x(B, 3, 4), _x(B, 5, 2), _x(B, 5, 3)
    layer = ATTENTION_FACTORIES[name]()
    assert_value_error(lambda: call_numpy(layer, (q, v), {"key": k}),
                       "key", "query", (B, 5, 3), (B, 3, 4))
    # Symbolically too.
    assert_value_error(lambda: layer(keras.Input((3, 4)), keras.Input((5, 2)),
                                     key=keras.Input((5, 3))), "key", (None, 5, 3))


@attention_factories
def test_broadcastable_masks_and_unknown_sizes_are_accepted(factory):
    q, v = _x(B, 4, 4), _x(B, 5, 4)
    for kwargs in ({"attention_mask": np.ones((1, 5), bool)},
                   {"attention_mask": np.ones((B, 1, 5), bool)},
                   {"valid_lens": np.array([3], "int32")},
                   {"valid_lens": np.array([[1], [2]], "int32")}):
        assert call_numpy(factory(), (q, v), kwargs).shape[:2] == (B, 4)
    out = factory()(keras.Input((None, 4)), keras.Input((None, 4)),
                    valid_lens=keras.Input((), dtype="int32"))
    assert tuple(out.shape[:2]) == (None, None)


def test_mha_cache_attention_mask_shape_is_checked():
    layer = make("MultiHeadAttention", num_heads=2, key_dim=2)
    x = _x(B, 1, 4)
    call_numpy(layer, (x, x), {})
    cache = layer.init_cache(B, 3)
    assert_value_error(
        lambda: layer.call_with_cache(to_tensor(x), cache, 0,
                                      attention_mask=np.ones((B, 1, 4), bool)),
        "attention_mask", (B, 1, 4), (B, 1, 3))


# ----------------------------------------------------------------------------
# Signatures from the spec
# ----------------------------------------------------------------------------
ATTENTION_CALL = [
    ("query", REQUIRED), ("value", REQUIRED), ("key", None), ("attention_mask", None),
    ("valid_lens", None), ("use_causal_mask", False), ("return_attention_scores", False),
    ("training", None),
]
CONSTRUCTORS = {
    "NadarayaWatsonAttention": [("trainable_bandwidth", False), ("initial_bandwidth", 1.0)],
    "AdditiveAttention": [("units", REQUIRED), ("dropout", 0.0)],
    "ScaledDotProductAttention": [("dropout", 0.0)],
    "MultiHeadAttention": [
        ("num_heads", REQUIRED), ("key_dim", REQUIRED), ("value_dim", None),
        ("dropout", 0.0), ("use_bias", True), ("output_shape", None),
        ("kernel_initializer", "glorot_uniform"), ("bias_initializer", "zeros"),
    ],
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_signatures_follow_the_spec(name):
    cls = layer_class(name)
    assert issubclass(cls, keras.layers.Layer)
    assert_signature(cls.__init__, CONSTRUCTORS[name], none_ok=("key_dim",))
    assert_signature(cls.call, ATTENTION_CALL)


# ----------------------------------------------------------------------------
# Constructor validation
# ----------------------------------------------------------------------------
BAD_CONSTRUCTORS = [
    ("additive_units_0", lambda: make("AdditiveAttention", units=0), 0),
    ("additive_units_neg", lambda: make("AdditiveAttention", units=-3), -3),
    ("additive_dropout_1", lambda: make("AdditiveAttention", units=4, dropout=1.0), 1.0),
    ("additive_dropout_neg", lambda: make("AdditiveAttention", units=4, dropout=-0.25), -0.25),
    ("sdpa_dropout_1", lambda: make("ScaledDotProductAttention", dropout=1.0), 1.0),
    ("sdpa_dropout_big", lambda: make("ScaledDotProductAttention", dropout=1.5), 1.5),
    ("sdpa_dropout_neg", lambda: make("ScaledDotProductAttention", dropout=-0.5), -0.5),
    ("mha_heads_0", lambda: make("MultiHeadAttention", num_heads=0, key_dim=4), 0),
    ("mha_heads_neg", lambda: make("MultiHeadAttention", num_heads=-2, key_dim=4), -2),
    ("mha_key_dim_0", lambda: make("MultiHeadAttention", num_heads=2, key_dim=0), 0),
    ("mha_key_dim_neg", lambda: make("MultiHeadAttention", num_heads=2, key_dim=-7), -7),
    ("mha_key_dim_none", lambda: make("MultiHeadAttention", num_heads=2, key_dim=None),
     "key_dim"),
    ("mha_value_dim_neg",
     lambda: make("MultiHeadAttention", num_heads=2, key_dim=4, value_dim=-5), -5),
    ("mha_dropout_1",
     lambda: make("MultiHeadAttention", num_heads=2, key_dim=4, dropout=1.0), 1.0),
    ("mha_dropout_neg",
     lambda: make("MultiHeadAttention", num_heads=2, key_dim=4, dropout=-0.1), -0.1),
    ("mha_heads_float", lambda: make("MultiHeadAttention", num_heads=2.0, key_dim=4), 2.0),
    ("mha_heads_bool", lambda: make("MultiHeadAttention", num_heads=True, key_dim=4), True),
    ("mha_heads_str", lambda: make("MultiHeadAttention", num_heads="2", key_dim=4), "2"),
    ("nw_dropout_1", lambda: make("NadarayaWatsonAttention", dropout=1.0), 1.0),
    ("nw_bandwidth_inf",
     lambda: make("NadarayaWatsonAttention", initial_bandwidth=float("inf")), "inf"),
]


@pytest.mark.parametrize(
    "factory,bad", [c[1:] for c in BAD_CONSTRUCTORS], ids=[c[0] for c in BAD_CONSTRUCTORS]
)
def test_constructor_rejects_bad_arguments(factory, bad):
    assert_value_error(factory, bad)


def test_numpy_integers_are_accepted_and_stored_as_ints():
    layer = make("MultiHeadAttention", num_heads=np.int64(2), key_dim=np.int32(4),
                 output_shape=np.int64(6))
    assert (layer.num_heads, layer.key_dim, layer.value_dim, layer.output_dim) == (2, 4, 4, 6)
    assert {type(v) for v in (layer.num_heads, layer.key_dim, layer.value_dim,
                              layer.output_dim)} == {int}
    x = np.zeros((B, 3, 8), "float32")
    assert call_numpy(layer, (x, x), {}).shape == (B, 3, 6)
    keras.saving.serialize_keras_object(layer)  # JSON-able config
    assert type(make("AdditiveAttention", units=np.uint8(3)).units) is int
    assert type(make("ScaledDotProductAttention", dropout=np.float32(0.5)).dropout) is float


def test_nadaraya_watson_dropout_survives_config_and_keras_file(tmp_path):
    layer = make("NadarayaWatsonAttention", dropout=0.5)
    assert layer.get_config()["dropout"] == 0.5
    assert type(layer).from_config(layer.get_config()).dropout == 0.5
    q = keras.Input((3, 2))
    v = keras.Input((4, 2))
    model = keras.Model([q, v], layer(q, v))
    path = str(tmp_path / "nw.keras")
    model.save(path)
    revived = keras.saving.load_model(path).get_layer(layer.name)
    assert revived.dropout == 0.5 and revived.dropout_layer.rate == 0.5


@pytest.mark.parametrize("index", [7, 4, -2, np.int64(4)])
def test_mha_cache_index_past_the_cache_is_an_error(index):
    layer = make("MultiHeadAttention", num_heads=2, key_dim=2)
    x = np.zeros((B, 2, 4), "float32")
    call_numpy(layer, (x, x), {})
    cache = layer.init_cache(B, 5)
    assert_value_error(lambda: layer.call_with_cache(to_tensor(x), cache, index),
                       "cache_update_index", index, "length 5")
    out, new_cache = layer.call_with_cache(to_tensor(x), cache, 3)
    assert tuple(out.shape) == (B, 2, 4) and tuple(new_cache.shape) == tuple(cache.shape)


def test_mha_missing_key_dim_is_a_value_error():
    assert_value_error(lambda: make("MultiHeadAttention", num_heads=2), "key_dim")


def test_valid_arguments_are_accepted():
    make("AdditiveAttention", units=1, dropout=0.0)
    make("AdditiveAttention", units=4, dropout=0.99)
    make("ScaledDotProductAttention", dropout=0.0)
    make("MultiHeadAttention", num_heads=1, key_dim=1)
    make("NadarayaWatsonAttention", trainable_bandwidth=True, initial_bandwidth=2.0)


def test_mha_keys_only_mask_applies_to_every_item_and_query():
    # A one-axis `(Tk,)` mask with fewer queries than keys (was an axis error).
    rng = np.random.default_rng(21)
    query, value = rnd(rng, 2, 3, 8), rnd(rng, 2, 5, 8)
    layer = make("MultiHeadAttention", num_heads=2, key_dim=4)
    keys = np.array([1, 0, 1, 1, 0], bool)
    out, weights = call_numpy(layer, (query, value), {"attention_mask": keys},
                              return_attention_scores=True)
    full = call_numpy(layer, (query, value),
                      {"attention_mask": np.broadcast_to(keys, (2, 3, 5)).copy()})
    np.testing.assert_allclose(out, full, atol=1e-6)
    assert np.all(weights[..., ~keys] == 0)
