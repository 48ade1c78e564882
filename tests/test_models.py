"""Tests of the ViT factory and its attention maps (keras_vit/models/).

Every expectation comes from an independent source: the published parameter
count of ViT-B/16, the papers' variant table, a parameter-count formula and a
numpy recomputation of the attention weights written here, hand-computed
attention-rollout examples, and a learnable synthetic task.
"""

import math

import keras
import numpy as np
import pytest

from keras_vit.layers import TransformerEncoderBlock
from keras_vit.models import (
    VIT_VARIANTS,
    attention_rollout,
    attention_weights,
    block_inputs_model,
    parse_variant,
    rollout_maps,
    token_features,
    vision_transformer,
)

# Dosovitskiy et al. 2020 table 1 (B, L, H); Touvron et al. 2020 (DeiT) table 1 (Ti, S).
PAPER_VARIANTS = {
    "Ti": dict(hidden_dim=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(hidden_dim=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(hidden_dim=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(hidden_dim=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(hidden_dim=1280, depth=32, mlp_dim=5120, num_heads=16),
}
VIT_B16_IMAGENET_PARAMETERS = 86_567_656  # timm / the paper's ViT-B/16, 224x224, 1000 classes

TINY = dict(hidden_dim=16, depth=2, num_heads=2, mlp_dim=32)


pytestmark = pytest.mark.usefixtures("seeded_keras")


# ----------------------------------------------------------------------- helpers


def expected_parameters(image_shape, num_classes, patch, hidden_dim, depth, mlp_dim,
                        pooling="token", position_embedding="learned",
                        representation_size=None, include_top=True):
    """Parameter count of a pre-norm ViT, from its definition (independent of keras_vit)."""
    height, width, channels = image_shape
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    d = hidden_dim
    patches = (height // ph) * (width // pw)
    tokens = patches + (1 if pooling == "token" else 0)
    total = ph * pw * channels * d + d                      # patch projection (conv) + bias
    total += d if pooling == "token" else 0                 # class token
    total += tokens * d if position_embedding == "learned" else 0
    block = (2 * d                                          # layer norm 1 (gamma, beta)
             + 3 * (d * d + d)                              # q, k, v projections + biases
             + d * d + d                                    # attention output projection
             + 2 * d                                        # layer norm 2
             + d * mlp_dim + mlp_dim + mlp_dim * d + d)     # MLP
    total += depth * block + 2 * d                          # blocks + final layer norm
    features = d
    if representation_size:
        total += d * representation_size + representation_size
        features = representation_size
    if include_top:
        total += features * num_classes + num_classes
    return total


def randomise_weights(model, seed=0, scale=0.3):
    """Gives every variable non-trivial values (biases, class token... are zeros at init)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, scale, variable.shape).astype("float32"))


def random_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def np_layer_norm(x, gamma, beta, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_rollout(weights, fusion=np.mean):
    rollout = None
    for block in weights:
        fused = fusion(np.asarray(block, "float64"), axis=1)
        mixed = 0.5 * (fused + np.eye(fused.shape[-1]))
        mixed = mixed / mixed.sum(-1, keepdims=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def blocks_of(model):
    return [layer for layer in model.layers if isinstance(layer, TransformerEncoderBlock)]


# ----------------------------------------------------------------- architecture


def test_vit_b16_has_the_published_parameter_count():
    model = vision_transformer("B/16", image_shape=(224, 224, 3), num_classes=1000)
    assert model.count_params() == VIT_B16_IMAGENET_PARAMETERS
    # ... and the formula used below agrees with the published figure.
    assert expected_parameters((224, 224, 3), 1000, 16, 768, 12, 3072) == \
        VIT_B16_IMAGENET_PARAMETERS
    assert model.name == "vit_b16"
    assert model.output_shape == (None, 1000)
    assert len(blocks_of(model)) == 12


@pytest.mark.parametrize("size", sorted(PAPER_VARIANTS))
def test_variant_table_matches_the_papers(size):
    assert VIT_VARIANTS[size] == PAPER_VARIANTS[size]
    assert parse_variant(f"{size}/14") == (size, 14)
    assert parse_variant(size) == (size, None)


@pytest.mark.parametrize("size", ["Ti", "S"])
def test_built_variant_has_the_papers_width_depth_mlp_and_heads(size):
    paper = PAPER_VARIANTS[size]
    d, heads = paper["hidden_dim"], paper["num_heads"]
    model = vision_transformer(f"{size}/16", image_shape=(32, 32, 3), num_classes=7)
    blocks = blocks_of(model)
    assert len(blocks) == paper["depth"]
    for block in blocks:
        assert block.num_heads == heads
        assert block.attention.num_heads == heads
        assert block.attention.key_dim == d // heads
        assert block.mlp.hidden_dim == paper["mlp_dim"]
        assert tuple(block.mlp.dense1.kernel.shape) == (d, paper["mlp_dim"])
        assert tuple(block.mlp.dense2.kernel.shape) == (paper["mlp_dim"], d)
        assert tuple(block.attention.query_dense.kernel.shape) == (d, heads, d // heads)
    assert model.get_layer("patch_embedding").output.shape[-1] == d
    # 2x2 patches of 16 pixels + the class token; the last block keeps the class token only.
    assert tuple(blocks[-1].input.shape) == (None, 5, d)
    assert tuple(model.get_layer("encoder_norm").output.shape) == (None, 1, d)
    assert tuple(model.get_layer("head").kernel.shape) == (d, 7)
    assert model.count_params() == expected_parameters(
        (32, 32, 3), 7, 16, d, paper["depth"], paper["mlp_dim"])


PARAMETER_CASES = {
    "token_learned": dict(variant="Ti/4", image_shape=(16, 16, 3), num_classes=10),
    "gap_learned": dict(variant="Ti/4", image_shape=(16, 16, 3), num_classes=10, pooling="gap"),
    "token_sincos2d": dict(variant="Ti/4", image_shape=(16, 16, 3), num_classes=10,
                           position_embedding="sincos2d"),
    "gap_sincos2d": dict(variant="Ti/4", image_shape=(16, 16, 3), num_classes=10,
                         pooling="gap", position_embedding="sincos2d"),
    "representation": dict(variant="Ti/4", image_shape=(16, 16, 3), num_classes=10,
                           representation_size=24),
    "grayscale": dict(variant="Ti/2", image_shape=(8, 8, 1), num_classes=10),
    "non_square": dict(variant="Ti", patch_size=(4, 5), image_shape=(12, 20, 3), num_classes=4),
    "five_channels": dict(variant="Ti/4", image_shape=(8, 12, 5), num_classes=3),
    "no_top": dict(variant="Ti/4", image_shape=(8, 8, 3), num_classes=3, include_top=False),
}


@pytest.mark.parametrize("case", sorted(PARAMETER_CASES))
def test_parameter_count_matches_the_formula(case):
    kwargs = dict(PARAMETER_CASES[case])
    overrides = dict(hidden_dim=32, depth=2, num_heads=4, mlp_dim=48)
    model = vision_transformer(**kwargs, **overrides)
    _, variant_patch = parse_variant(kwargs["variant"])
    expected = expected_parameters(
        kwargs["image_shape"], kwargs["num_classes"], kwargs.get("patch_size", variant_patch),
        overrides["hidden_dim"], overrides["depth"], overrides["mlp_dim"],
        pooling=kwargs.get("pooling", "token"),
        position_embedding=kwargs.get("position_embedding", "learned"),
        representation_size=kwargs.get("representation_size"),
        include_top=kwargs.get("include_top", True))
    assert model.count_params() == expected
    out = model(random_images((2,) + kwargs["image_shape"]))
    width = kwargs.get("representation_size") or overrides["hidden_dim"]
    assert tuple(out.shape) == ((2, kwargs["num_classes"]) if kwargs.get("include_top", True)
                                else (2, width))


def _all_token_reference(model):
    """`model` with its last block computing every token, sharing all layers.

    The reference for the token-pooled ViT's shortcut: the same layers called
    as a plain chain on the last block's full input, the head reading token 0
    (and 1 for DeiT) of the normalised tokens.
    """
    last = blocks_of(model)[-1]
    tokens = model.get_layer("encoder_norm")(last(last.input))
    logits = model.get_layer("head")(tokens[:, 0])
    if "head_distillation" in [layer.name for layer in model.layers]:
        distilled = model.get_layer("head_distillation")(tokens[:, 1])
        logits = (logits + distilled) / 2
    return keras.Model(model.inputs[0], logits)


@pytest.mark.parametrize("options, kept", [({}, 1), ({"distillation_token": True}, 2)],
                         ids=["class_token", "deit"])
def test_token_pooled_last_block_computes_its_prefix_tokens_only(options, kept):
    model = vision_transformer("Ti/4", (8, 8, 3), 5, **TINY, **options)
    last = blocks_of(model)[-1]
    assert tuple(last.input.shape) == (None, 4 + kept, 16)
    assert tuple(last.output.shape) == (None, kept, 16)
    images = np.random.default_rng(2).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)),
                               keras.ops.convert_to_numpy(_all_token_reference(model)(images)),
                               rtol=1e-5, atol=1e-5)


def test_average_pooled_model_keeps_every_token():
    model = vision_transformer("Ti/4", (8, 8, 3), 5, pooling="gap", **TINY)
    last = blocks_of(model)[-1]
    assert tuple(last.output.shape) == tuple(last.input.shape) == (None, 4, 16)
    assert token_features(model) is model.get_layer("encoder_norm").output


@pytest.mark.parametrize("options", [{}, {"distillation_token": True}], ids=["cls", "deit"])
def test_token_features_give_every_token_of_a_token_pooled_model(options):
    model = vision_transformer("Ti/4", (8, 8, 3), 5, **TINY, **options)
    features = keras.Model(model.inputs[0], token_features(model))
    images = np.random.default_rng(5).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    # Reference: the last block's own layers on the tokens entering it, every row.
    last = blocks_of(model)[-1]
    entering = block_inputs_model(model)(images)[-1]
    expected = model.get_layer("encoder_norm")(last(entering))
    got = keras.ops.convert_to_numpy(features(images))
    assert got.shape == (2, 4 + len(options) + 1, 16)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)
    # The model itself still computes the prefix tokens alone, and they agree.
    prefix = keras.Model(model.inputs[0], model.get_layer("encoder_norm").output)(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(prefix), got[:, :len(options) + 1],
                               rtol=1e-5, atol=1e-5)


def test_token_features_need_an_encoder_norm():
    model = vision_transformer("Ti/4", (8, 8, 3), 5, pooling="gap", fc_norm=True, **TINY)
    with pytest.raises(ValueError, match="has no `encoder_norm`"):
        token_features(model)


@pytest.mark.tensorflow_only
def test_token_pooled_shortcut_trains_like_the_full_model():
    import tensorflow as tf

    model = vision_transformer("Ti/4", (8, 8, 3), 5, dropout=0.0, **TINY)
    reference = _all_token_reference(model)
    images = tf.constant(np.random.default_rng(4).uniform(0, 255, (3, 8, 8, 3)), tf.float32)
    labels = tf.constant([0, 3, 4])

    def gradients(m):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels, m(images),
                                                                from_logits=True)
        return tape.gradient(loss, m.trainable_variables)

    ours, full = gradients(model), gradients(reference)
    assert [v.path for v in model.trainable_variables] == [
        v.path for v in reference.trainable_variables]
    for variable, a, b in zip(model.trainable_variables, ours, full):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=variable.path)


def test_sincos2d_model_has_no_position_variables():
    model = vision_transformer("Ti/4", image_shape=(16, 16, 3), num_classes=10,
                               position_embedding="sincos2d", **TINY)
    assert model.get_layer("position_embedding").weights == []


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("policy, tolerance", [
    ("float32", 1e-6), ("mixed_bfloat16", 2e-2), ("mixed_float16", 5e-3)])
def test_logits_are_float32_and_close_to_the_float32_model(policy, tolerance):
    kwargs = dict(variant="Ti/4", image_shape=(8, 8, 3), num_classes=5, **TINY)
    keras.config.set_dtype_policy("float32")
    reference = vision_transformer(**kwargs)
    randomise_weights(reference, scale=0.2)
    images = random_images((4, 8, 8, 3))
    expected = keras.ops.convert_to_numpy(reference(images))

    keras.config.set_dtype_policy(policy)
    model = vision_transformer(**kwargs)
    model.set_weights(reference.get_weights())
    compute = {"float32": "float32", "mixed_bfloat16": "bfloat16",
               "mixed_float16": "float16"}[policy]
    assert blocks_of(model)[0].compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.weights)
    logits = model(images)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert tuple(logits.shape) == (4, 5)
    logits = keras.ops.convert_to_numpy(logits)
    assert np.all(np.isfinite(logits))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, atol=tolerance * scale, rtol=0)
    predicted = model.predict(images, verbose=0)
    assert predicted.dtype == np.float32 and predicted.shape == (4, 5)


# --------------------------------------------------------------- normalisation


@pytest.mark.parametrize("mean, std", [
    (0.5, 0.5),
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
def test_normalisation_maps_pixels_to_standardised_values(mean, std):
    kwargs = {} if mean == 0.5 else dict(mean=mean, std=std)
    model = vision_transformer("Ti/4", image_shape=(4, 4, 3), num_classes=2, **TINY, **kwargs)
    mean = np.broadcast_to(np.asarray(mean, "float64"), (3,))
    std = np.broadcast_to(np.asarray(std, "float64"), (3,))
    normalise = keras.Model(model.input, model.get_layer("normalisation").output)
    images = np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 255.0),
                       random_images((4, 4, 3))]).astype("float32")
    out = normalise.predict(images, verbose=0)
    np.testing.assert_allclose(out[0], np.broadcast_to((0 - mean) / std, (4, 4, 3)), atol=1e-5)
    np.testing.assert_allclose(out[1], np.broadcast_to((1 - mean) / std, (4, 4, 3)), atol=1e-5)
    np.testing.assert_allclose(out[2], (images[2] / 255.0 - mean) / std, atol=1e-5)
    if kwargs == {}:
        np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
        np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_normalisation_of_a_grayscale_model():
    model = vision_transformer("Ti/2", image_shape=(4, 4, 1), num_classes=2, **TINY,
                               mean=0.25, std=0.125)
    layer = model.get_layer("normalisation")
    out = keras.ops.convert_to_numpy(layer(np.array([[[[0.0]], [[255.0]]]], "float32")))
    np.testing.assert_allclose(out.ravel(), [(0 - 0.25) / 0.125, (1 - 0.25) / 0.125], atol=1e-5)


# ------------------------------------------------------------------- overrides


def test_overrides_build_and_predict():
    model = vision_transformer("Ti/4", image_shape=(8, 8, 1), num_classes=10, hidden_dim=32,
                               depth=2, num_heads=2, mlp_dim=64)
    assert len(blocks_of(model)) == 2
    assert all(b.num_heads == 2 and b.mlp.hidden_dim == 64 for b in blocks_of(model))
    assert model.get_layer("patch_embedding").patch_size == (4, 4)
    assert model.count_params() == expected_parameters((8, 8, 1), 10, 4, 32, 2, 64)
    out = model.predict(random_images((3, 8, 8, 1)), verbose=0)
    assert out.shape == (3, 10) and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_patch_size_argument_beats_the_variants():
    model = vision_transformer("Ti/4", image_shape=(8, 8, 1), num_classes=10, patch_size=2,
                               **TINY)
    assert model.get_layer("patch_embedding").patch_size == (2, 2)
    # 4x4 grid + class token.
    assert tuple(model.get_layer("position_embedding").embedding.shape) == (1, 17, 16)
    assert model.name == "vit_ti2"
    assert model.count_params() == expected_parameters((8, 8, 1), 10, 2, 16, 2, 32)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, needles", [
    (dict(variant="Z/16"), ["Z/16"]),
    (dict(variant="Ti/16", image_shape=(30, 30, 3)), ["16", "30"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), hidden_dim=10, num_heads=3), ["10", "3"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), pooling="max"), ["max"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), position_embedding="rope"), ["rope"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), dropout=1.5), ["1.5"]),
    (dict(variant="Ti/4", image_shape=(32, 32)), ["(32, 32)"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), num_classes=0), ["num_classes", "0"]),
    (dict(variant="Ti", image_shape=(8, 8, 3)), ["Ti"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), patch_size=0), ["patch_size", "0"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), class_token=False), ["class_token=False"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), pooling="gap", distillation_token=True),
     ["distillation_token", "gap"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), mlp_activation="relu"),
     ["mlp_activation", "relu"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 3), layer_norm_epsilon=0), ["layer_norm_epsilon"]),
    (dict(variant="Ti/4", image_shape=(8.5, 8, 1)), ["image_shape", "(8.5, 8, 1)"]),
    (dict(variant="Ti/4", image_shape=(None, None, 1)), ["image_shape", "(None, None, 1)"]),
    (dict(variant="Ti/4", image_shape=(8, 8, 1), mean=[0.5, 0.5, 0.5]),
     ["`mean` needs 1 value (one per channel of the 1-channel images)"]),
], ids=["unknown_variant", "patch_not_dividing", "heads_not_dividing", "pooling_max",
        "position_rope", "dropout_1.5", "image_shape_2d", "num_classes_0", "no_patch_size",
        "patch_size_0", "token_without_class_token", "distilled_gap", "activation_relu",
        "epsilon_0", "image_shape_float", "image_shape_none", "mean_3_for_1_channel"])
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, needles):
    with pytest.raises(ValueError) as info:
        vision_transformer(**{"num_classes": 10, **kwargs})
    message = str(info.value)
    for needle in needles:
        assert needle in message, message


# -------------------------------------------------------------- attention maps


def test_attention_weights_equal_a_numpy_recomputation():
    mean, std = (0.3, 0.6), (0.2, 0.4)
    model = vision_transformer("Ti/4", image_shape=(8, 12, 2), num_classes=3, hidden_dim=8,
                               depth=1, num_heads=2, mlp_dim=16, mean=mean, std=std)
    randomise_weights(model, seed=1, scale=0.8)
    images = random_images((5, 8, 12, 2), seed=2)
    weights = attention_weights(model, images, batch_size=3)  # two passes, concatenated
    assert len(weights) == 1
    got = weights[0]
    assert got.shape == (5, 2, 7, 7) and got.dtype == np.float32

    x = (images.astype("float64") / 255.0 - np.asarray(mean)) / np.asarray(std)
    patch = model.get_layer("patch_embedding").projection
    kernel = keras.ops.convert_to_numpy(patch.kernel).astype("float64")  # (4, 4, 2, 8)
    bias = keras.ops.convert_to_numpy(patch.bias)
    patches = x.reshape(5, 2, 4, 3, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(5, 6, 32)
    tokens = patches @ kernel.reshape(32, 8) + bias
    token = keras.ops.convert_to_numpy(model.get_layer("class_token").token)
    tokens = np.concatenate([np.broadcast_to(token, (5, 1, 8)), tokens], axis=1)
    tokens = tokens + keras.ops.convert_to_numpy(model.get_layer("position_embedding").embedding)
    block = blocks_of(model)[0]
    as_np = lambda v: keras.ops.convert_to_numpy(v).astype("float64")  # noqa: E731
    normed = np_layer_norm(tokens, as_np(block.norm1.gamma), as_np(block.norm1.beta))
    q = np.einsum("btd,dhk->bthk", normed, as_np(block.attention.query_dense.kernel)) \
        + as_np(block.attention.query_dense.bias)
    k = np.einsum("btd,dhk->bthk", normed, as_np(block.attention.key_dense.kernel)) \
        + as_np(block.attention.key_dense.bias)
    expected = np_softmax(np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(4))
    assert expected.std() > 0.01  # not a uniform-attention triviality
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("pooling, position", [("token", "learned"), ("gap", "sincos2d")])
def test_attention_weights_shapes_and_rows(pooling, position):
    model = vision_transformer("Ti/2", image_shape=(8, 8, 1), num_classes=10, pooling=pooling,
                               position_embedding=position, **TINY)
    weights = attention_weights(model, random_images((3, 8, 8, 1)))
    tokens = 16 + (pooling == "token")
    assert len(weights) == TINY["depth"]
    for block in weights:
        assert block.shape == (3, TINY["num_heads"], tokens, tokens)
        assert np.all(block >= 0)
        np.testing.assert_allclose(block.sum(-1), 1.0, atol=1e-5)


def test_attention_rollout_hand_computed_mean():
    # Block 1: heads average to all-0.5, so 0.5 * (A + I) = [[.75, .25], [.25, .75]].
    block1 = np.array([[[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]]])
    # Block 2: every query looks at token 1: 0.5 * (A + I) = [[.5, .5], [0, 1]].
    block2 = np.array([[[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    rollout = attention_rollout([block1, block2])
    # Later block on the left: [[.5, .5], [0, 1]] @ [[.75, .25], [.25, .75]].
    np.testing.assert_allclose(rollout, [[[0.5, 0.5], [0.25, 0.75]]], atol=1e-7)
    assert rollout.dtype == np.float32 and rollout.shape == (1, 2, 2)
    # The other order would give [[.375, .625], [.125, .875]].
    assert not np.allclose(rollout, [[[0.375, 0.625], [0.125, 0.875]]])


def test_attention_rollout_hand_computed_max_renormalises():
    block1 = np.array([[[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]]])
    block2 = np.array([[[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    # max over heads of block 1: [[.5, .5], [1, 1]] -> 0.5 (A + I) = [[.75, .25], [.5, 1]]
    # -> rows renormalised [[.75, .25], [1/3, 2/3]]; block 2 as before [[.5, .5], [0, 1]].
    expected = [[[0.5 * 0.75 + 0.5 / 3, 0.5 * 0.25 + 0.5 * 2 / 3], [1 / 3, 2 / 3]]]
    np.testing.assert_allclose(attention_rollout([block1, block2], head_fusion="max"),
                               expected, atol=1e-6)
    # min over heads: block 1 [[.5, .5], [0, 0]] -> [[.75, .25], [0, .5]] -> [[.75, .25], [0, 1]].
    expected_min = [[[0.5 * 0.75, 0.5 * 0.25 + 0.5], [0.0, 1.0]]]
    np.testing.assert_allclose(attention_rollout([block1, block2], head_fusion="min"),
                               expected_min, atol=1e-6)
    with pytest.raises(ValueError, match="median"):
        attention_rollout([block1], head_fusion="median")


@pytest.mark.parametrize("pooling, options, prefix", [
    ("token", {}, 1), ("gap", {}, 0),
    ("token", dict(distillation_token=True), 2),           # DeiT: class + distillation token
    ("gap", dict(class_token=True, fc_norm=True), 1),      # timm avg pooling with a class token
])
def test_rollout_maps_cover_the_patch_grid(pooling, options, prefix):
    model = vision_transformer("Ti/2", image_shape=(6, 8, 1), num_classes=4, pooling=pooling,
                               **options, **TINY)
    randomise_weights(model, seed=3, scale=0.3)
    images = random_images((3, 6, 8, 1), seed=4)
    maps = rollout_maps(model, images)
    assert maps.shape == (3, 3, 4) and maps.dtype == np.float32
    assert np.all(maps >= 0) and np.all(maps <= 1)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-6)
    rollout = np_rollout(attention_weights(model, images))
    assert rollout.shape[-1] == prefix + 12
    raw = (rollout[:, 0, prefix:] if pooling == "token"
           else rollout[:, prefix:, prefix:].mean(axis=1))
    raw = raw.reshape(3, 3, 4)
    low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (raw - low) / (high - low), atol=1e-4)


# -------------------------------------------------------------------- saving


@pytest.mark.parametrize("pooling, position", [("token", "learned"), ("gap", "sincos2d")])
def test_keras_file_round_trip_without_custom_objects(tmp_path, pooling, position):
    model = vision_transformer("Ti/2", image_shape=(8, 8, 1), num_classes=10, pooling=pooling,
                               position_embedding=position, representation_size=8, **TINY)
    randomise_weights(model, seed=5, scale=0.2)
    images = random_images((4, 8, 8, 1), seed=6)
    expected = model.predict(images, verbose=0)
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == model.name
    assert loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    assert len(attention_weights(loaded, images[:2])) == TINY["depth"]


@pytest.mark.parametrize("options, extra", [
    # DeiT: a distillation token (+ its position row) and a second head.
    (dict(distillation_token=True), lambda d, k: 2 * d + d * k + k),
    # timm's global_pool="avg" with a class token: the norm moves after pooling (same size).
    (dict(pooling="gap", class_token=True, fc_norm=True), lambda d, k: 0),
])
def test_distillation_and_fc_norm_layouts_count_their_parameters(options, extra):
    model = vision_transformer("Ti/2", image_shape=(8, 8, 1), num_classes=10, **options, **TINY)
    base = expected_parameters((8, 8, 1), 10, 2, 16, 2, 32)
    assert model.count_params() == base + extra(16, 10)
    prefix = 2 if options.get("distillation_token") else 1
    assert model.get_layer("pooling").num_prefix_tokens == prefix


def test_gelu_tanh_model_loads_in_a_fresh_process(tmp_path):
    # The activation is registered when keras_vit is imported, nothing else needed.
    import subprocess
    import sys

    model = vision_transformer("Ti/2", image_shape=(8, 8, 1), num_classes=3,
                               mlp_activation="gelu_tanh", layer_norm_epsilon=1e-12, **TINY)
    model.save(tmp_path / "m.keras")
    path = str(tmp_path / "m.keras")
    code = (f"import keras, keras_vit; m = keras.models.load_model({path!r}); "
            "b = m.get_layer('encoder_block_0'); print(b.mlp.activation.__name__, b.epsilon)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["gelu_tanh", "1e-12"]


# -------------------------------------------------------------------- training


def brighter_half_task(count, seed):
    """8x8 noise images; label 1 when the right half is brighter than the left."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 160, (count, 8, 8, 1))
    labels = rng.integers(0, 2, count)
    images[labels == 0, :, :4] += 80
    images[labels == 1, :, 4:] += 80
    return images.astype("float32"), labels.astype("int32")


def test_training_learns_a_task_that_needs_attention():
    # Token pooling: the class token sees the patches only through attention, so
    # learning this task needs gradients through every part of the model.
    model = vision_transformer("Ti/4", image_shape=(8, 8, 1), num_classes=2, hidden_dim=16,
                               depth=1, num_heads=2, mlp_dim=32)
    x_train, y_train = brighter_half_task(512, seed=0)
    x_test, y_test = brighter_half_task(256, seed=1)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
    before_weights = [np.array(w) for w in model.get_weights()]
    loss_before, accuracy_before = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy_before < 0.75
    history = model.fit(x_train, y_train, batch_size=32, epochs=8, verbose=0)
    loss_after, accuracy_after = model.evaluate(x_test, y_test, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert loss_after < min(loss_before, math.log(2)) * 0.5
    assert accuracy_after >= 0.9
    for before, variable in zip(before_weights, model.weights):
        assert not np.allclose(before, keras.ops.convert_to_numpy(variable)), variable.path


def test_features_only_model_needs_no_num_classes():
    model = vision_transformer("Ti/4", image_shape=(np.int64(8), 8, 1), num_classes=None,
                               include_top=False, hidden_dim=16, depth=1, num_heads=2,
                               mlp_dim=32)
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 16)
