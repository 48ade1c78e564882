"""Generic checks shared by the keras_vit layer tests.

Modelled on keras-hub's ``TestCase.run_layer_test``: every layer is described
once as a :class:`LayerCase` (class name, constructor kwargs, an input factory
and the expected output shapes) and :func:`harness_tests` turns a list of
cases into parametrised pytest functions that check

* build + symbolic call + eager call (shapes, dtype, weight counts,
  ``compute_output_shape``),
* ``get_config`` / ``from_config`` and ``serialize_keras_object`` round trips,
  registration under the ``keras_vit`` package, config mirrors constructor,
* a ``.keras`` round trip of a functional model wrapping the layer, reloaded
  WITHOUT ``custom_objects``,
* ``mixed_float16`` / ``mixed_bfloat16`` policies: finite outputs close to
  float32 (weights copied from a float32 twin), eagerly and compiled
  (``predict_on_batch``), float32 variables, outputs in the compute dtype,
* gradients reach every trainable weight.

The module also holds the numpy reference helpers (masked softmax, layer
norm, GELU, multi-head attention) used by several test files.

The layer classes are resolved lazily (``getattr(keras_vit.layers, name)``) so
that one missing layer fails its own tests instead of the whole collection.
"""

import dataclasses
import inspect
import json
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

import keras_vit.layers as vit_layers

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ----------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_global_state():
    """Seed every test and restore the global dtype policy afterwards."""
    policy = keras.config.dtype_policy()
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy(policy)


# ----------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------
def layer_class(name):
    cls = getattr(vit_layers, name, None)
    if cls is None:
        pytest.fail(f"keras_vit.layers has no attribute {name!r}")
    return cls


def make(name, **kwargs):
    """Instantiate ``keras_vit.layers.<name>(**kwargs)``."""
    return layer_class(name)(**kwargs)


def to_numpy(x):
    if x is None:
        return None
    return np.asarray(keras.ops.convert_to_numpy(x))


def flat(outputs):
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def is_array(x):
    return isinstance(x, np.ndarray)


def to_tensor(x):
    return keras.ops.convert_to_tensor(x) if is_array(x) else x


def call_layer(layer, args, kwargs, **extra):
    """Call ``layer`` on numpy inputs; returns the raw (tensor) outputs."""
    args = [to_tensor(a) for a in args]
    kwargs = {k: to_tensor(v) for k, v in kwargs.items()}
    return layer(*args, **kwargs, **extra)


def call_numpy(layer, args, kwargs, **extra):
    out = call_layer(layer, args, kwargs, **extra)
    if isinstance(out, (list, tuple)):
        return type(out)(to_numpy(o) for o in out)
    return to_numpy(out)


def std_dtype(x):
    return keras.backend.standardize_dtype(x)


def is_float(dtype):
    return std_dtype(dtype) in FLOAT_DTYPES


def jsonable(x):
    """Tuples -> lists, recursively (what a JSON round trip does)."""
    return json.loads(json.dumps(x))


def random_weights_(layer, rng, scale=0.5):
    """Overwrite every float weight of ``layer`` with random values."""
    for w in layer.weights:
        if is_float(w.dtype):
            w.assign(rng.normal(size=tuple(w.shape)).astype("float32") * scale)


# ----------------------------------------------------------------------------
# Numpy references
# ----------------------------------------------------------------------------
def np_masked_softmax(scores, mask=None):
    """Softmax over the last axis; ``mask`` True = keep; all-masked -> 0."""
    scores = np.asarray(scores, np.float64)
    if mask is not None:
        scores = np.where(np.asarray(mask, bool), scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(scores - m)
    s = e.sum(axis=-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def np_valid_lens_mask(valid_lens, tq, tk):
    """(B,) or (B, Tq) valid lengths -> boolean (B, Tq, Tk), True = attend."""
    vl = np.asarray(valid_lens)
    if vl.ndim == 1:
        vl = np.repeat(vl[:, None], tq, axis=1)
    return np.arange(tk)[None, None, :] < vl[:, :, None]


def np_causal_mask(tq, tk):
    return np.arange(tk)[None, :] <= np.arange(tq)[:, None]


def np_layer_norm(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


_erf = np.vectorize(math.erf)


def np_gelu(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_relu(x):
    return np.maximum(x, 0.0)


NP_ACTIVATIONS = {"gelu": np_gelu, "relu": np_relu}


def np_ffn(x, w1, b1, w2, b2, activation):
    h = NP_ACTIVATIONS[activation](np.asarray(x, np.float64) @ w1 + b1)
    return h @ w2 + b2


def np_mha(query, value, key, weights, use_bias=True, mask=None):
    """Numpy multi-head attention with keras.layers.MultiHeadAttention's
    weight layout. ``mask`` is boolean (B, Tq, Tk) (True = attend) or None.
    Returns (output (B, Tq, out), scores (B, H, Tq, Tk))."""
    if key is None:
        key = value
    w = [np.asarray(a, np.float64) for a in weights]
    if use_bias:
        wq, bq, wk, bk, wv, bv, wo, bo = w
    else:
        wq, wk, wv, wo = w
        bq = bk = bv = bo = 0.0
    q = np.einsum("btd,dhk->bthk", query, wq) + bq
    k = np.einsum("btd,dhk->bthk", key, wk) + bk
    v = np.einsum("btd,dhk->bthk", value, wv) + bv
    key_dim = wq.shape[-1]
    logits = np.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(key_dim)
    m = None if mask is None else np.asarray(mask, bool)[:, None, :, :]
    scores = np_masked_softmax(logits, m)
    ctx = np.einsum("bhqt,bthv->bqhv", scores, v)
    out = np.einsum("bqhv,hvo->bqo", ctx, wo) + bo
    return out, scores


# ----------------------------------------------------------------------------
# Layer cases
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class LayerCase:
    """One (layer factory, input factory) pair for the generic checks.

    ``make_inputs(rng)`` returns ``(args, kwargs)``: numpy arrays become
    tensors (and ``keras.Input``s in the functional model); other values
    (e.g. ``use_causal_mask=True``) are passed through unchanged.
    ``expected_output_shapes`` is a list with one shape per output.
    ``zero_grad_ok(layer)`` lists trainable variables whose gradient is zero
    *mathematically* (e.g. an attention key bias, which only shifts every
    logit of a softmax row by the same constant).
    """

    id: str
    cls_name: str
    init_kwargs: dict
    make_inputs: Callable[[np.random.Generator], tuple]
    expected_output_shapes: list
    expected_num_trainable_weights: int | None = None
    expected_num_non_trainable_weights: int | None = None
    zero_grad_ok: Callable[[Any], list] | None = None
    check_compute_output_shape: bool = True
    precision_tolerance: float = 5e-2
    seed: int = 0

    def make_layer(self, **extra):
        return make(self.cls_name, **{**self.init_kwargs, **extra})

    def inputs(self):
        return self.make_inputs(np.random.default_rng(self.seed))


def _assert_shapes(outputs, expected, what):
    got = [tuple(o.shape) for o in flat(outputs)]
    exp = [tuple(s) for s in expected]
    assert got == exp, f"{what}: output shapes {got}, expected {exp}"


def _assert_weight_counts(layer, case):
    if case.expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == case.expected_num_trainable_weights, (
            [w.path for w in layer.trainable_weights]
        )
    if case.expected_num_non_trainable_weights is not None:
        assert (
            len(layer.non_trainable_weights)
            == case.expected_num_non_trainable_weights
        ), [w.path for w in layer.non_trainable_weights]


def run_build_and_call_test(case):
    args, kwargs = case.inputs()

    # Symbolic call (KerasTensors).
    layer = case.make_layer()
    sym_args = [
        keras.KerasTensor(a.shape, dtype=str(a.dtype)) if is_array(a) else a
        for a in args
    ]
    sym_kwargs = {
        k: keras.KerasTensor(v.shape, dtype=str(v.dtype)) if is_array(v) else v
        for k, v in kwargs.items()
    }
    sym_out = layer(*sym_args, **sym_kwargs)
    assert layer.built
    _assert_shapes(sym_out, case.expected_output_shapes, "symbolic call")
    _assert_weight_counts(layer, case)

    # Eager call.
    layer = case.make_layer()
    out = call_layer(layer, args, kwargs)
    assert layer.built
    _assert_shapes(out, case.expected_output_shapes, "eager call")
    _assert_weight_counts(layer, case)
    first = flat(out)[0]
    assert std_dtype(first.dtype) == std_dtype(layer.compute_dtype)
    # Computed by the active backend (a tf.Tensor under JAX would fail this).
    assert all(keras.ops.is_tensor(o) for o in flat(out)), [type(o) for o in flat(out)]
    for o in flat(out):
        if is_float(o.dtype):
            assert np.all(np.isfinite(to_numpy(o)))

    # Second call with the same layer is deterministic at inference.
    out2 = call_layer(layer, args, kwargs)
    for a, b in zip(flat(out), flat(out2)):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))

    # compute_output_shape on the positional input shapes.
    if case.check_compute_output_shape:
        shapes = [tuple(a.shape) for a in args if is_array(a)]
        cos = layer.compute_output_shape(*shapes)
        if cos and isinstance(cos[0], (tuple, list)):
            cos = [tuple(s) for s in cos]
            assert cos == [tuple(s) for s in case.expected_output_shapes]
        else:
            assert tuple(cos) == tuple(case.expected_output_shapes[0])


def _same_argument(stored, given):
    """Config value equals the constructor argument, allowing the usual
    normalisation of an int size to a tuple (``4`` -> ``(4, 4)``)."""
    stored, given = jsonable(stored), jsonable(given)
    if stored == given:
        return True
    if isinstance(given, (int, float)) and isinstance(stored, list):
        return len(stored) > 0 and all(s == given for s in stored)
    return False


def run_config_round_trip_test(case):
    args, kwargs = case.inputs()
    layer = case.make_layer()
    call_layer(layer, args, kwargs)
    cls = type(layer)

    # Registered under the keras_vit package.
    registered = keras.saving.get_registered_name(cls)
    assert registered == f"keras_vit>{cls.__name__}", registered

    cfg = layer.get_config()
    cfg_json = json.dumps(cfg, sort_keys=True)

    # The config mirrors the constructor: every named argument is present
    # and the values the case passed come back.
    params = inspect.signature(cls.__init__).parameters
    for name, p in params.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        assert name in cfg, f"get_config() lacks constructor argument {name!r}"
    for name, value in case.init_kwargs.items():
        assert _same_argument(cfg[name], value), (name, cfg[name], value)

    revived = cls.from_config(cfg)
    assert json.dumps(revived.get_config(), sort_keys=True) == cfg_json

    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls
    assert json.dumps(revived.get_config(), sort_keys=True) == cfg_json

    # The revived layer, given the same weights, computes the same thing.
    revived = cls.from_config(cfg)
    call_layer(revived, args, kwargs)
    revived.set_weights(layer.get_weights())
    for a, b in zip(
        flat(call_numpy(layer, args, kwargs)), flat(call_numpy(revived, args, kwargs))
    ):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def build_functional_model(layer, args, kwargs):
    """Wrap ``layer`` in a functional model; returns (model, feed list)."""
    inputs, feed = [], []

    def sym(name, value):
        if not is_array(value):
            return value
        t = keras.Input(shape=value.shape[1:], dtype=str(value.dtype), name=name)
        inputs.append(t)
        feed.append(value)
        return t

    sym_args = [sym(f"arg{i}", a) for i, a in enumerate(args)]
    sym_kwargs = {k: sym(k, v) for k, v in kwargs.items()}
    outputs = layer(*sym_args, **sym_kwargs)
    return keras.Model(inputs, outputs), feed


def run_keras_file_round_trip_test(case, tmp_path):
    args, kwargs = case.inputs()
    layer = case.make_layer()
    model, feed = build_functional_model(layer, args, kwargs)
    # Make the weights non-trivial (e.g. zero-initialised tokens).
    random_weights_(layer, np.random.default_rng(7), scale=0.3)
    ref = [to_numpy(o) for o in flat(model(feed))]

    path = str(tmp_path / f"{case.cls_name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects on purpose
    revived_layer = loaded.get_layer(layer.name)
    assert type(revived_layer) is type(layer)
    assert json.dumps(revived_layer.get_config(), sort_keys=True) == json.dumps(
        layer.get_config(), sort_keys=True
    )
    got = [to_numpy(o) for o in flat(loaded(feed))]
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


def run_mixed_precision_test(case, policy_name):
    args, kwargs = case.inputs()
    ref_layer = case.make_layer()
    ref = [to_numpy(o) for o in flat(call_layer(ref_layer, args, kwargs))]

    policy = keras.DTypePolicy(policy_name)
    layer = case.make_layer(dtype=policy)
    call_layer(layer, args, kwargs)  # build
    layer.set_weights(ref_layer.get_weights())
    out = flat(call_layer(layer, args, kwargs))

    assert layer.compute_dtype == policy.compute_dtype
    assert layer.variable_dtype == "float32"
    assert std_dtype(out[0].dtype) == policy.compute_dtype, out[0].dtype
    for w in layer.weights:
        if is_float(w.dtype):
            assert std_dtype(w.dtype) == "float32", (w.path, w.dtype)
    # Sublayers that own weights must follow the policy as well.
    for sub in layer._flatten_layers(include_self=False):
        if sub.weights:
            assert sub.compute_dtype == policy.compute_dtype, (sub.name, sub.dtype_policy)
            assert sub.variable_dtype == "float32", (sub.name, sub.dtype_policy)

    # The compiled call (jax.jit / tf.function) as well: some kernels accept a
    # dtype eagerly and not under XLA (float16 attention on JAX's CPU).
    model, feed = build_functional_model(layer, args, kwargs)
    compiled = flat(model.predict_on_batch(feed))

    tol = case.precision_tolerance
    for r, o, c in zip(ref, out, compiled):
        if not is_float(o.dtype):
            continue
        o = to_numpy(keras.ops.cast(o, "float32"))
        assert np.all(np.isfinite(o)), f"non-finite output under {policy_name}"
        scale = max(float(np.max(np.abs(r))), 1e-3)
        np.testing.assert_allclose(o, r, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(np.asarray(c, "float32"), r, rtol=tol, atol=tol * scale)


def _is_float_tensor(x):
    return keras.ops.is_tensor(x) and is_float(x.dtype)


def _projected_loss(outputs, projections):
    """Sum of every float output times its fixed random projection: a scalar
    whose gradient is non-zero even where the outputs sum to a constant
    (e.g. after a final LayerNorm)."""
    loss = 0.0
    for o, r in zip(outputs, projections):
        if r is not None:
            loss = loss + keras.ops.sum(keras.ops.cast(o, "float32") * r)
    return loss


def layer_gradients(layer, args, kwargs, projections):
    """Gradients of :func:`_projected_loss` with respect to the layer's
    trainable weights and to its float tensor inputs, on the active backend.

    ``args``/``kwargs`` are tensors (or pass-through values); returns
    ``(weight_grads, input_grads)`` as numpy arrays (None where no gradient
    reaches), in the order of ``layer.trainable_weights`` and of the float
    inputs (positional first, then keyword in insertion order).
    """
    slots = [("arg", i) for i, a in enumerate(args) if _is_float_tensor(a)]
    slots += [("kw", k) for k, v in kwargs.items() if _is_float_tensor(v)]

    def with_inputs(values):
        new_args, new_kwargs = list(args), dict(kwargs)
        for (kind, key), value in zip(slots, values):
            (new_args if kind == "arg" else new_kwargs)[key] = value
        return new_args, new_kwargs

    inputs = [args[k] if kind == "arg" else kwargs[k] for kind, k in slots]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            tape.watch(inputs)
            loss = _projected_loss(flat(layer(*args, **kwargs)), projections)
        weight_grads = tape.gradient(loss, layer.trainable_weights)
        input_grads = tape.gradient(loss, inputs)
        del tape
    elif backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss_fn(trainable_values, input_values):
            a, k = with_inputs(input_values)
            outputs, _ = layer.stateless_call(trainable_values, frozen, *a, **k)
            return _projected_loss(flat(outputs), projections)

        # One jit-compiled module instead of hundreds of separately compiled eager ops.
        grad_fn = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))
        weight_grads, input_grads = grad_fn(trainable, inputs)
    else:  # pragma: no cover - the suite runs on TensorFlow and JAX only
        pytest.fail(f"no gradient helper for the {backend!r} backend")
    return [to_numpy(g) for g in weight_grads], [to_numpy(g) for g in input_grads]


def run_gradient_test(case):
    args, kwargs = case.inputs()
    layer = case.make_layer()
    t_args = [to_tensor(a) for a in args]
    t_kwargs = {k: to_tensor(v) for k, v in kwargs.items()}
    outputs = flat(layer(*t_args, **t_kwargs))  # builds, and gives the output shapes
    # A random projection of the outputs, so that e.g. a final LayerNorm
    # (whose outputs sum to a constant) does not zero every gradient.
    rng = np.random.default_rng(99)
    projections = [
        rng.normal(size=tuple(o.shape)).astype("float32") if is_float(o.dtype) else None
        for o in outputs
    ]
    if case.expected_num_trainable_weights == 0:
        assert not layer.trainable_weights
    weight_grads, input_grads = layer_gradients(layer, t_args, t_kwargs, projections)

    exempt = {id(v) for v in (case.zero_grad_ok(layer) if case.zero_grad_ok else [])}
    for w, g in zip(layer.trainable_weights, weight_grads):
        assert g is not None, f"no gradient reaches {w.path}"
        assert np.all(np.isfinite(g)), w.path
        if id(w) not in exempt:
            assert np.any(g != 0), f"gradient of {w.path} is all zero"
    # Gradients also flow back to the float inputs.
    if input_grads:
        assert any(
            g is not None and np.any(g != 0) for g in input_grads
        ), "no gradient reaches the inputs"


def harness_tests(cases):
    """Return the parametrised generic tests for ``cases``.

    Usage in a test module::

        (test_build_and_call, test_config_round_trip, test_keras_file_round_trip,
         test_mixed_precision, test_gradients) = harness_tests(CASES)
    """
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    param = pytest.mark.parametrize("case", cases, ids=ids)

    @param
    def test_build_and_call(case):
        run_build_and_call_test(case)

    @param
    def test_config_round_trip(case):
        run_config_round_trip_test(case)

    @param
    def test_keras_file_round_trip(case, tmp_path):
        run_keras_file_round_trip_test(case, tmp_path)

    @param
    @pytest.mark.parametrize("policy_name", MIXED_POLICIES)
    def test_mixed_precision(case, policy_name):
        run_mixed_precision_test(case, policy_name)

    @param
    def test_gradients(case):
        run_gradient_test(case)

    return (
        test_build_and_call,
        test_config_round_trip,
        test_keras_file_round_trip,
        test_mixed_precision,
        test_gradients,
    )


REQUIRED = object()  # marks a spec parameter without default


def assert_signature(fn, spec, skip=0, none_ok=()):
    """The parameters of ``fn`` (after ``self`` and ``skip`` leading ones)
    start with ``spec``, a list of ``(name, default)`` (``REQUIRED`` for no
    default), in that order and with those defaults. Extra parameters after
    them are allowed. Names in ``none_ok`` may default to None instead of
    being required."""
    params = [
        p for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ][skip:]
    got = [p.name for p in params[: len(spec)]]
    assert got == [name for name, _ in spec], f"parameters {got}, spec {spec}"
    for p, (name, default) in zip(params, spec):
        if default is REQUIRED:
            assert p.default is inspect.Parameter.empty or (
                name in none_ok and p.default is None
            ), f"{name} should be required, has default {p.default!r}"
        else:
            assert p.default is not inspect.Parameter.empty and p.default == default, (
                f"{name}: default {p.default!r}, spec says {default!r}"
            )


def assert_value_error(fn, *needles):
    """``fn()`` raises ValueError whose message contains every needle."""
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    for n in needles:
        assert str(n) in msg, f"ValueError message {msg!r} does not mention {n!r}"


def rnd(rng, *shape, scale=1.0):
    """float32 standard-normal array of `shape` (times `scale`) from `rng`."""
    return (rng.normal(size=shape) * scale).astype("float32")
