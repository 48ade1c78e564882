"""Tests for the position / embedding layers of keras_vit.layers (from the spec).

SinusoidalPositionEncoding, SinCosPositionEncoding2D, PositionEmbedding,
PatchEmbedding and ClassToken: numpy references, structure, constructor
checks, plus the generic harness checks.
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
    call_numpy,
    harness_tests,
    layer_class,
    make,
    random_weights_,
    rnd,
    to_numpy,
)

B = 2
ATOL = 1e-5



def _x(*shape):
    return lambda rng: ((rnd(rng, *shape),), {})


CASES = [
    LayerCase(
        "sinusoidal", "SinusoidalPositionEncoding", {"max_length": 10},
        _x(B, 6, 8), [(B, 6, 8)], expected_num_trainable_weights=0,
    ),
    LayerCase(
        "sinusoidal_odd_dropout", "SinusoidalPositionEncoding",
        {"max_length": 5, "dropout": 0.1},
        _x(B, 5, 7), [(B, 5, 7)], expected_num_trainable_weights=0,
    ),
    LayerCase(
        "sincos_2d", "SinCosPositionEncoding2D", {"grid_size": (2, 3)},
        _x(B, 6, 8), [(B, 6, 8)], expected_num_trainable_weights=0,
    ),
    LayerCase(
        "sincos_2d_temperature", "SinCosPositionEncoding2D",
        {"grid_size": (3, 2), "temperature": 100.0},
        _x(B, 6, 12), [(B, 6, 12)], expected_num_trainable_weights=0,
    ),
    LayerCase(
        "position_embedding", "PositionEmbedding", {"sequence_length": 5},
        _x(B, 5, 8), [(B, 5, 8)], expected_num_trainable_weights=1,
    ),
    LayerCase(
        "patch_embedding", "PatchEmbedding", {"patch_size": 4, "hidden_dim": 8},
        _x(B, 8, 12, 3), [(B, 6, 8)], expected_num_trainable_weights=2,
    ),
    LayerCase(
        "patch_embedding_rect", "PatchEmbedding", {"patch_size": (4, 2), "hidden_dim": 6},
        _x(B, 8, 6, 1), [(B, 6, 6)], expected_num_trainable_weights=2,
    ),
    LayerCase(
        "class_token", "ClassToken", {},
        _x(B, 4, 8), [(B, 5, 8)], expected_num_trainable_weights=1,
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
# SinusoidalPositionEncoding
# ----------------------------------------------------------------------------
def np_sinusoidal(t, d):
    """P[i, 2j] = sin(i / 10000^(2j/d)), P[i, 2j+1] = cos(i / 10000^(2j/d))."""
    p = np.zeros((t, d), np.float64)
    for i in range(t):
        for c in range(d):
            two_j = c - (c % 2)
            angle = i / 10000.0 ** (two_j / d)
            p[i, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    return p


@pytest.mark.parametrize(
    "t,d,max_length", [(6, 8, 10), (5, 7, 5), (20, 16, 20), (3, 1, 4), (7, 9, 12)]
)
def test_sinusoidal_matches_closed_form(t, d, max_length):
    rng = np.random.default_rng(0)
    x = rnd(rng, B, t, d)
    layer = make("SinusoidalPositionEncoding", max_length=max_length)
    out = call_numpy(layer, (x,), {})
    assert out.shape == (B, t, d)
    np.testing.assert_allclose(out - x, np.broadcast_to(np_sinusoidal(t, d), x.shape),
                               atol=ATOL)
    assert not layer.trainable_weights


def test_sinusoidal_shorter_inputs_use_the_prefix():
    rng = np.random.default_rng(1)
    layer = make("SinusoidalPositionEncoding", max_length=12)
    long_x = rnd(rng, B, 12, 6)
    short_x = long_x[:, :4]
    long_out = call_numpy(layer, (long_x,), {})
    short_out = call_numpy(make("SinusoidalPositionEncoding", max_length=12), (short_x,), {})
    np.testing.assert_allclose(short_out, long_out[:, :4], atol=ATOL)


def test_sinusoidal_too_long_input_is_an_error():
    x = np.zeros((B, 6, 8), "float32")
    layer = make("SinusoidalPositionEncoding", max_length=5)
    with pytest.raises(ValueError, match="sequence length 6 exceeds max_length=5"):
        call_numpy(layer, (x,), {})


def test_sinusoidal_variable_length_functional_model():
    inputs = keras.Input(shape=(None, 6))
    model = keras.Model(inputs, make("SinusoidalPositionEncoding", max_length=8)(inputs))
    rng = np.random.default_rng(9)
    for t in (3, 8):
        x = rnd(rng, B, t, 6)
        np.testing.assert_allclose(to_numpy(model(x)), x + np_sinusoidal(t, 6), atol=ATOL)
    # A functional model of variable length checks each call's length.
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_length=8"):
        model(rnd(rng, B, 9, 6))


def test_sinusoidal_dropout_only_in_training():
    rng = np.random.default_rng(2)
    x = rnd(rng, B, 6, 8)
    ref = x + np_sinusoidal(6, 8)
    layer = make("SinusoidalPositionEncoding", max_length=6, dropout=0.5)
    np.testing.assert_allclose(call_numpy(layer, (x,), {}), ref, atol=ATOL)
    np.testing.assert_allclose(call_numpy(layer, (x,), {}, training=False), ref, atol=ATOL)
    trained = call_numpy(layer, (x,), {}, training=True)
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, ref, atol=1e-3)
    # Inverted dropout: surviving entries are ref / (1 - rate).
    kept = trained != 0
    np.testing.assert_allclose(trained[kept], (ref / 0.5)[kept], atol=1e-4)


# ----------------------------------------------------------------------------
# SinCosPositionEncoding2D (structure only: the channel order is free)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("grid,d", [((3, 4), 16), ((2, 2), 8), ((4, 3), 12)])
def test_sincos_2d_structure(grid, d):
    gh, gw = grid
    t = gh * gw
    rng = np.random.default_rng(3)
    x = rnd(rng, B, t, d)
    layer = make("SinCosPositionEncoding2D", grid_size=grid)
    out = call_numpy(layer, (x,), {})
    assert out.shape == (B, t, d)
    assert not layer.trainable_weights
    p = call_numpy(layer, (np.zeros_like(x),), {})
    # Added to the input, the same for every sequence of the batch.
    np.testing.assert_allclose(out - x, p, atol=ATOL)
    np.testing.assert_allclose(p[0], p[1], atol=0)
    p = p[0].astype(np.float64)
    assert np.all(np.abs(p) <= 1.0 + 1e-6)
    # Distinct positions get distinct encodings.
    for a in range(t):
        for b in range(a + 1, t):
            assert not np.allclose(p[a], p[b], atol=1e-4), (a, b)
    # The origin (row 0, col 0) is sin(0) = 0 and cos(0) = 1: half and half.
    assert np.sum(np.isclose(p[0], 0.0, atol=1e-6)) == d // 2
    assert np.sum(np.isclose(p[0], 1.0, atol=1e-6)) == d // 2

    pos = p.reshape(gh, gw, d)  # row-major token order
    # Channels that do not change along a grid row (they encode the row
    # index) and channels that do not change along a column (column index).
    same_row = np.all(np.isclose(pos, pos[:, :1], atol=1e-6), axis=(0, 1))
    same_col = np.all(np.isclose(pos, pos[:1, :], atol=1e-6), axis=(0, 1))
    assert same_row.sum() >= d // 2, same_row
    assert same_col.sum() >= d // 2, same_col
    assert np.all(same_row | same_col), "every channel encodes the row or the column"
    # ... and those halves do vary with the other coordinate.
    if gh > 1:
        assert not np.allclose(pos[0][:, same_row], pos[1][:, same_row], atol=1e-6)
    if gw > 1:
        assert not np.allclose(pos[:, 0][:, same_col], pos[:, 1][:, same_col], atol=1e-6)
    # Row half of token (r, c) equals that of (r, c') exactly, and the row half
    # of row r equals the column half of column r (both are 1-D sincos(r)).
    row_half = np.sort(pos[:, 0][:, same_row & ~same_col], axis=-1)
    col_half = np.sort(pos[0, :][:, same_col & ~same_row], axis=-1)
    n = min(gh, gw)
    if row_half.shape[-1] == col_half.shape[-1]:
        np.testing.assert_allclose(row_half[:n], col_half[:n], atol=1e-5)


def test_sincos_2d_temperature_changes_frequencies():
    x = np.zeros((1, 6, 8), "float32")
    p1 = call_numpy(make("SinCosPositionEncoding2D", grid_size=(2, 3)), (x,), {})
    p2 = call_numpy(
        make("SinCosPositionEncoding2D", grid_size=(2, 3), temperature=10.0), (x,), {}
    )
    assert not np.allclose(p1, p2, atol=1e-4)


@pytest.mark.parametrize("d", [6, 10, 2])
def test_sincos_2d_rejects_width_not_divisible_by_4(d):
    x = np.zeros((B, 4, d), "float32")
    layer = make("SinCosPositionEncoding2D", grid_size=(2, 2))
    assert_value_error(lambda: call_numpy(layer, (x,), {}), d)


# ----------------------------------------------------------------------------
# PositionEmbedding
# ----------------------------------------------------------------------------
def test_position_embedding_adds_a_learned_table():
    rng = np.random.default_rng(4)
    x = rnd(rng, B, 5, 8)
    layer = make("PositionEmbedding", sequence_length=5)
    out = call_numpy(layer, (x,), {})
    assert len(layer.trainable_weights) == 1
    table = to_numpy(layer.trainable_weights[0])
    assert table.size == 5 * 8
    table = table.reshape(1, 5, 8)
    assert np.any(table != 0), "default truncated_normal init is not all zero"
    np.testing.assert_allclose(out, x + table, atol=1e-6)
    # After an update the new values are used.
    layer.trainable_weights[0].assign(
        rng.normal(size=tuple(layer.trainable_weights[0].shape)).astype("float32")
    )
    table = to_numpy(layer.trainable_weights[0]).reshape(1, 5, 8)
    np.testing.assert_allclose(call_numpy(layer, (x,), {}), x + table, atol=1e-6)


def test_position_embedding_default_init_is_vit_truncated_normal():
    layer = make("PositionEmbedding", sequence_length=64)
    layer.build((None, 64, 64))
    table = to_numpy(layer.trainable_weights[0])
    assert 0.015 < table.std() < 0.025
    assert np.abs(table).max() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations


def test_position_embedding_initializer_argument():
    x = np.zeros((B, 3, 4), "float32")
    layer = make("PositionEmbedding", sequence_length=3, initializer="zeros")
    np.testing.assert_array_equal(call_numpy(layer, (x,), {}), x)


# ----------------------------------------------------------------------------
# PatchEmbedding
# ----------------------------------------------------------------------------
def np_patch_embed(images, ph, pw, kernel, bias):
    b, h, w, c = images.shape
    gh, gw = h // ph, w // pw
    patches = images.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, ph * pw * c).astype(np.float64)
    return patches @ kernel.reshape(ph * pw * c, -1) + bias


@pytest.mark.parametrize(
    "patch,image,hidden",
    [
        (4, (8, 12, 3), 8),
        ((4, 2), (8, 6, 1), 6),
        ((2, 3), (6, 9, 5), 4),
        (2, (2, 2, 3), 5),
        ((1, 4), (3, 8, 2), 7),
    ],
)
def test_patch_embedding_matches_numpy_patchify(patch, image, hidden):
    rng = np.random.default_rng(5)
    images = rnd(rng, B, *image)
    layer = make("PatchEmbedding", patch_size=patch, hidden_dim=hidden)
    call_numpy(layer, (images,), {})
    random_weights_(layer, rng)
    out = call_numpy(layer, (images,), {})
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    kernel = to_numpy(layer.projection.kernel)
    bias = to_numpy(layer.projection.bias)
    assert kernel.shape == (ph, pw, image[2], hidden)
    assert tuple(layer.projection.strides) == (ph, pw)
    gh, gw = image[0] // ph, image[1] // pw
    assert out.shape == (B, gh * gw, hidden)
    np.testing.assert_allclose(out, np_patch_embed(images, ph, pw, kernel, bias), atol=ATOL)


def test_patch_embedding_order_is_row_major():
    # Image whose pixel values are their patch index: output token t must be
    # patch t in row-major order.
    ph = pw = 2
    gh, gw = 2, 3
    img = np.zeros((1, gh * ph, gw * pw, 1), "float32")
    for r in range(gh):
        for c in range(gw):
            img[0, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw, 0] = r * gw + c
    layer = make("PatchEmbedding", patch_size=2, hidden_dim=1)
    call_numpy(layer, (img,), {})
    layer.projection.kernel.assign(np.full((2, 2, 1, 1), 0.25, "float32"))
    layer.projection.bias.assign(np.zeros((1,), "float32"))
    out = call_numpy(layer, (img,), {})
    np.testing.assert_allclose(out[0, :, 0], np.arange(gh * gw), atol=1e-6)


class _KerasConvPatches(keras.layers.Layer):
    """Reference: a built PatchEmbedding's weights through Keras' own Conv2D call."""

    def __init__(self, embedding):
        super().__init__(dtype=embedding.dtype_policy)
        self.embedding = embedding

    def call(self, images):
        grid, width = self.embedding.grid, self.embedding.hidden_dim
        return keras.ops.reshape(self.embedding.projection(images), (-1, grid[0] * grid[1], width))


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
@pytest.mark.parametrize("patch,image", [(4, (8, 12, 3)), ((16, 4), (16, 64, 1))])
def test_patch_embedding_matmul_equals_keras_conv(dtype, tolerance, patch, image):
    """The layer's matmul over patch pixels: Keras' Conv2D values and gradients, any policy."""
    from layer_harness import layer_gradients

    rng = np.random.default_rng(11)
    images = rng.uniform(0, 255, (3, *image)).astype("float32")
    layer = layer_class("PatchEmbedding")(patch, 8, dtype=dtype)
    layer(images)
    reference = _KerasConvPatches(layer)
    out, expected = to_numpy(layer(images)), to_numpy(reference(images))
    assert layer(images).dtype == reference(images).dtype == layer.compute_dtype
    # Tolerances relative to the largest value (bfloat16 keeps 8 bits).
    np.testing.assert_allclose(out.astype("float32"), expected.astype("float32"),
                               atol=tolerance * np.abs(expected).max())
    projections = [rng.normal(size=out.shape).astype("float32")]
    grads, _ = layer_gradients(layer, (images,), {}, projections)
    expected_grads, _ = layer_gradients(reference, (images,), {}, projections)
    assert len(grads) == len(expected_grads) == 2  # kernel and bias
    for grad, want in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, want, atol=tolerance * np.abs(want).max())


def test_patch_embedding_reads_the_lora_kernel_like_keras_conv():
    rng = np.random.default_rng(12)
    images = rng.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    layer = layer_class("PatchEmbedding")(4, 6)
    before = to_numpy(layer(images))
    layer.projection.enable_lora(2)
    layer.projection.lora_kernel_b.assign(rng.normal(size=(2, 6)).astype("float32"))
    after = to_numpy(layer(images))
    assert np.abs(after - before).max() > 1e-3  # the LoRA update counts
    np.testing.assert_allclose(after, to_numpy(_KerasConvPatches(layer)(images)), atol=1e-5)


@pytest.mark.parametrize(
    "patch,image,needles",
    [
        (4, (10, 8, 3), (10, 4)),
        (4, (8, 6, 3), (6, 4)),
        ((3, 2), (9, 5, 1), (5, 2)),
        ((5, 2), (8, 4, 1), (8, 5)),
    ],
)
def test_patch_embedding_rejects_indivisible_images(patch, image, needles):
    layer = make("PatchEmbedding", patch_size=patch, hidden_dim=4)
    x = np.zeros((1, *image), "float32")
    assert_value_error(lambda: call_numpy(layer, (x,), {}), *needles)


@pytest.mark.parametrize("image", [(16, 16, 1), (8, 16, 1), (8, 8, 3)])
def test_patch_embedding_rejects_another_image_size_than_built_for(image):
    layer = make("PatchEmbedding", patch_size=4, hidden_dim=8)
    call_numpy(layer, (np.zeros((1, 8, 8, 1), "float32"),), {})
    x = np.zeros((1, *image), "float32")
    assert_value_error(lambda: call_numpy(layer, (x,), {}), "images", (8, 8, 1), (1, *image))
    # Symbolically as well.
    assert_value_error(lambda: layer(keras.Input(image)), (8, 8, 1), (None, *image))
    # The batch size may change.
    assert call_numpy(layer, (np.zeros((3, 8, 8, 1), "float32"),), {}).shape == (3, 4, 8)


@pytest.mark.parametrize("shape", [(8, 8, 1), (1, 1, 8, 8, 1)])
def test_patch_embedding_rejects_other_ranks(shape):
    layer = make("PatchEmbedding", patch_size=4, hidden_dim=8)
    x = np.zeros(shape, "float32")
    assert_value_error(lambda: call_numpy(layer, (x,), {}), "images", shape)


def test_patch_and_grid_sizes_accept_numpy_integers():
    layer = make("PatchEmbedding", patch_size=np.int64(4), hidden_dim=np.int32(8))
    assert layer.patch_size == (4, 4) and type(layer.patch_size[0]) is int
    assert type(layer.hidden_dim) is int
    grid = make("SinCosPositionEncoding2D", grid_size=[np.int32(2), 3]).grid_size
    assert grid == (2, 3) and type(grid[0]) is int


# ----------------------------------------------------------------------------
# ClassToken
# ----------------------------------------------------------------------------
def test_class_token_is_prepended():
    rng = np.random.default_rng(6)
    x = rnd(rng, B, 4, 8)
    layer = make("ClassToken")
    call_numpy(layer, (x,), {})
    assert len(layer.trainable_weights) == 1
    w = layer.trainable_weights[0]
    assert tuple(w.shape) in [(1, 1, 8), (8,)]
    w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))
    out = call_numpy(layer, (x,), {})
    token = to_numpy(w).reshape(8)
    assert out.shape == (B, 5, 8)
    for b in range(B):
        np.testing.assert_allclose(out[b, 0], token, atol=0)
    np.testing.assert_allclose(out[:, 1:], x, atol=0)


@pytest.mark.parametrize("shape", [(B, 8), (B, 2, 4, 8)])
def test_class_token_requires_rank_3(shape):
    x = np.zeros(shape, "float32")
    assert_value_error(lambda: call_numpy(make("ClassToken"), (x,), {}), "tokens", shape)


# ----------------------------------------------------------------------------
# Signatures from the spec
# ----------------------------------------------------------------------------
CONSTRUCTORS = {
    "SinusoidalPositionEncoding": [("max_length", REQUIRED), ("dropout", 0.0)],
    "SinCosPositionEncoding2D": [("grid_size", REQUIRED), ("temperature", 10000.0)],
    # None means ViT's TruncatedNormal(stddev=0.02) (Keras' own default stddev is 0.05).
    "PositionEmbedding": [("sequence_length", REQUIRED), ("initializer", None)],
    "PatchEmbedding": [("patch_size", REQUIRED), ("hidden_dim", REQUIRED)],
    "ClassToken": [],
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_signatures_follow_the_spec(name):
    cls = layer_class(name)
    assert issubclass(cls, keras.layers.Layer)
    assert_signature(cls.__init__, CONSTRUCTORS[name])


# ----------------------------------------------------------------------------
# Constructor validation
# ----------------------------------------------------------------------------
BAD_CONSTRUCTORS = [
    ("sin_max_length_0", lambda: make("SinusoidalPositionEncoding", max_length=0), 0),
    ("sin_max_length_neg", lambda: make("SinusoidalPositionEncoding", max_length=-4), -4),
    ("sin_dropout_1",
     lambda: make("SinusoidalPositionEncoding", max_length=4, dropout=1.0), 1.0),
    ("sin_dropout_neg",
     lambda: make("SinusoidalPositionEncoding", max_length=4, dropout=-0.2), -0.2),
    ("sincos_grid_0", lambda: make("SinCosPositionEncoding2D", grid_size=(0, 3)), 0),
    ("sincos_grid_neg", lambda: make("SinCosPositionEncoding2D", grid_size=(2, -3)), -3),
    ("posemb_len_0", lambda: make("PositionEmbedding", sequence_length=0), 0),
    ("posemb_len_neg", lambda: make("PositionEmbedding", sequence_length=-6), -6),
    ("patch_0", lambda: make("PatchEmbedding", patch_size=0, hidden_dim=8), 0),
    ("patch_neg", lambda: make("PatchEmbedding", patch_size=-4, hidden_dim=8), -4),
    ("patch_tuple_neg", lambda: make("PatchEmbedding", patch_size=(4, -2), hidden_dim=8), -2),
    ("patch_hidden_0", lambda: make("PatchEmbedding", patch_size=4, hidden_dim=0), 0),
    ("patch_hidden_neg", lambda: make("PatchEmbedding", patch_size=4, hidden_dim=-9), -9),
    ("patch_float", lambda: make("PatchEmbedding", patch_size=4.0, hidden_dim=8), 4.0),
    ("patch_triple", lambda: make("PatchEmbedding", patch_size=(4, 4, 4), hidden_dim=8),
     (4, 4, 4)),
    ("patch_str", lambda: make("PatchEmbedding", patch_size="4", hidden_dim=8), "patch_size"),
    ("sincos_grid_float", lambda: make("SinCosPositionEncoding2D", grid_size=2.0), 2.0),
    ("sincos_grid_float_pair",
     lambda: make("SinCosPositionEncoding2D", grid_size=(2, 2.5)), "grid_size"),
    ("sincos_grid_triple",
     lambda: make("SinCosPositionEncoding2D", grid_size=(2, 2, 2)), (2, 2, 2)),
    ("sincos_temperature_inf",
     lambda: make("SinCosPositionEncoding2D", grid_size=2, temperature=float("inf")), "inf"),
]


@pytest.mark.parametrize(
    "factory,bad", [c[1:] for c in BAD_CONSTRUCTORS], ids=[c[0] for c in BAD_CONSTRUCTORS]
)
def test_constructor_rejects_bad_arguments(factory, bad):
    assert_value_error(factory, bad)
