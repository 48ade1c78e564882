"""Tests of checkpoint import (keras_vit/models/checkpoints/) and the fine-tuning helpers.

References are independent of keras_vit: numpy forward passes written from
each format's conventions (tests/checkpoint_fixtures.py), keras-hub's own
Hugging Face converter and ViT, and `jax.image.resize` for resampling.
Tolerances: float32 model vs float64 numpy 1e-4 (max abs); resize vs jax 1e-5.
"""

import json

import jax
import keras
import keras_hub
import numpy as np
import pytest
from checkpoint_fixtures import (
    TINY,
    flax_to_timm,
    flax_weights,
    npz_forward,
    random_images,
    timm_forward,
    timm_to_hugging_face,
    timm_weights,
    write_hugging_face_dir,
)
from safetensors.numpy import save_file

from keras_vit.models import (
    attention_weights,
    freeze_backbone,
    load_checkpoint,
    replace_head,
    resample_position_embedding,
)

TOLERANCE = 1e-4  # float32 model vs float64 numpy / keras-hub, max abs difference of logits
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The same random weights as a Google npz, a timm state dict and a Hugging Face folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    flax = flax_weights(seed=0)
    np.savez(root / "vit.npz", **flax)
    timm = flax_to_timm(flax)
    save_file(timm, str(root / "timm.safetensors"))
    hf_dir = write_hugging_face_dir(root / "hf", timm_to_hugging_face(timm))
    return dict(root=root, flax=flax, timm=timm, npz=root / "vit.npz",
                timm_file=root / "timm.safetensors", hf=hf_dir)


def predict(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False)).astype("float64")


def jax_resample(table, from_grid, to_grid, prefix=1):
    """Reference resize: jax.image.resize (bicubic, antialiased), independent of keras.ops."""
    grid = np.asarray(table[0, prefix:]).reshape(*from_grid, -1)
    resized = jax.image.resize(grid, (*to_grid, grid.shape[-1]), method="cubic", antialias=True)
    grid = np.asarray(resized).reshape(-1, grid.shape[-1])
    return np.concatenate([table[0, :prefix], grid])[None]


# ------------------------------------------------------------------- resampling


@pytest.mark.parametrize("from_grid,to_grid", [((3, 3), (5, 5)), ((6, 4), (3, 7)),
                                               ((7, 7), (2, 3))])
@pytest.mark.parametrize("method,jax_method", [("bicubic", "cubic"), ("bilinear", "linear")])
def test_resample_matches_jax_image_resize(from_grid, to_grid, method, jax_method):
    table = np.random.default_rng(0).normal(size=(1, 2 + from_grid[0] * from_grid[1], 8))
    got = resample_position_embedding(table, from_grid, to_grid, num_prefix_tokens=2,
                                      method=method)
    grid = table[0, 2:].reshape(*from_grid, 8).astype("float32")
    expected = jax.image.resize(grid, (*to_grid, 8), method=jax_method, antialias=True)
    assert got.shape == (1, 2 + to_grid[0] * to_grid[1], 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0, :2], table[0, :2].astype("float32"))  # prefix kept
    np.testing.assert_allclose(got[0, 2:], np.asarray(expected).reshape(-1, 8), atol=1e-5)


def test_resample_reproduces_a_linear_ramp_and_keeps_an_unchanged_grid():
    # Bilinear interpolation with half-pixel centres reproduces an affine function
    # exactly away from the edges: output column j of a doubled grid sits at input
    # coordinate (j + 0.5) / 2 - 0.5, so a ramp equal to the column index gives j/2 - 1/4.
    ramp = np.arange(4, dtype="float32")[None, :, None] * np.ones((4, 1, 1), "float32")
    table = ramp.reshape(16, 1)
    got = resample_position_embedding(table, (4, 4), (8, 8), num_prefix_tokens=0,
                                      method="bilinear").reshape(8, 8)
    np.testing.assert_allclose(got[:, 1:7], np.broadcast_to(np.arange(1, 7) / 2 - 0.25, (8, 6)),
                               atol=1e-6)
    same = resample_position_embedding(table, 4, 4, num_prefix_tokens=0)
    np.testing.assert_array_equal(same, table)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(from_grid=(3, 3)), "needs 10"),
    (dict(from_grid=(2, 2), method="lanczos"), "method"),
    (dict(from_grid=(2, 2), to_grid=0), "to_grid"),
])
def test_resample_rejects_bad_arguments(kwargs, needle):
    table = np.zeros((1, 5, 4), "float32")
    with pytest.raises(ValueError, match=needle):
        resample_position_embedding(table, **{"to_grid": (3, 3), **kwargs})


# ------------------------------------------------------------- formats vs references


def test_google_npz_matches_a_flax_convention_numpy_forward(written):
    images = random_images((3, 12, 12, 3), seed=1)
    model = load_checkpoint(str(written["npz"]))
    assert model.get_layer("encoder_block_0").mlp.activation.__name__ == "gelu_tanh"
    np.testing.assert_allclose(predict(model, images), npz_forward(written["flax"], images),
                               atol=TOLERANCE)


@pytest.mark.parametrize("variant", ["gap_pre_logits", "new_size"])
def test_google_npz_variants(tmp_path, variant):
    images_shape = (2, 16, 20, 3) if variant == "new_size" else (2, 12, 12, 3)
    images = random_images(images_shape, seed=2)
    flax = flax_weights(seed=3, class_token=variant != "gap_pre_logits",
                        pre_logits=7 if variant == "gap_pre_logits" else None)
    np.savez(tmp_path / "v.npz", **flax)
    if variant == "new_size":  # 3x3 grid -> 4x5 grid: resampled position table
        model = load_checkpoint(str(tmp_path / "v.npz"), image_shape=(16, 20))
        table = jax_resample(flax["Transformer/posembed_input/pos_embedding"], (3, 3), (4, 5))
        expected = npz_forward(flax, images, positions=table)
    else:
        model = load_checkpoint(str(tmp_path / "v.npz"))
        assert model.get_layer("pooling").mode == "gap"
        expected = npz_forward(flax, images)
    np.testing.assert_allclose(predict(model, images), expected, atol=TOLERANCE)


@pytest.mark.parametrize("variant", ["token", "avg_fc_norm", "distilled", "no_embed_class_gap"])
def test_timm_matches_a_pytorch_convention_numpy_forward(tmp_path, variant):
    timm = timm_weights(seed=4, distilled=variant == "distilled",
                        avg_fc_norm=variant == "avg_fc_norm",
                        class_token=variant != "no_embed_class_gap",
                        no_embed_class=variant == "no_embed_class_gap")
    save_file(timm, str(tmp_path / "m.safetensors"))
    images = random_images((3, 12, 12, 3), seed=5)
    model = load_checkpoint(str(tmp_path / "m.safetensors"), num_heads=2, **IMAGENET)
    pool = "avg" if variant in ("avg_fc_norm", "no_embed_class_gap") else "token"
    expected, attentions = timm_forward(timm, images, heads=2, global_pool=pool,
                                        return_attention=True, **IMAGENET)
    np.testing.assert_allclose(predict(model, images), expected, atol=TOLERANCE)
    # Attention maps come from the model's own graph, whatever its prefix tokens.
    for got, want in zip(attention_weights(model, images), attentions):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_timm_distilled_keeps_both_tokens_at_a_new_size(tmp_path):
    timm = timm_weights(seed=6, distilled=True)
    save_file(timm, str(tmp_path / "deit.safetensors"))
    model = load_checkpoint(str(tmp_path / "deit.safetensors"), num_heads=2,
                            image_shape=(20, 16, 3), **IMAGENET)
    resized = dict(timm, pos_embed=jax_resample(timm["pos_embed"], (3, 3), (5, 4), prefix=2))
    images = random_images((2, 20, 16, 3), seed=7)
    np.testing.assert_allclose(predict(model, images),
                               timm_forward(resized, images, heads=2, **IMAGENET),
                               atol=TOLERANCE)


def test_timm_reads_heads_pooling_and_normalisation_from_config_json(tmp_path):
    timm = timm_weights(seed=8, avg_fc_norm=True)
    directory = tmp_path / "timm_hub"
    directory.mkdir()
    save_file(timm, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch4_12", "global_pool": "avg", "model_args": {"num_heads": 2},
        "pretrained_cfg": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25],
                           "input_size": [3, 12, 12]}}))
    images = random_images((2, 12, 12, 3), seed=9)
    model = load_checkpoint(str(directory))
    expected = timm_forward(timm, images, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), heads=2,
                            global_pool="avg")
    np.testing.assert_allclose(predict(model, images), expected, atol=TOLERANCE)


def test_same_weights_in_npz_hf_and_timm_naming_load_alike(written):
    npz = load_checkpoint(str(written["npz"]))
    hf = load_checkpoint(str(written["hf"]))
    timm = load_checkpoint(str(written["timm_file"]), num_heads=2, mean=0.5, std=0.5)
    for a, b, c in zip(npz.weights, hf.weights, timm.weights):
        assert a.path == b.path == c.path
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
        np.testing.assert_array_equal(a.numpy(), c.numpy(), err_msg=a.path)
    images = random_images((3, 12, 12, 3), seed=10)
    # HF and timm both use the exact GELU: equal outputs. The npz model uses Flax's
    # tanh GELU (checked against its own reference above), so it differs slightly.
    np.testing.assert_allclose(predict(hf, images), predict(timm, images), atol=1e-6)
    assert 1e-6 < np.abs(predict(npz, images) - predict(hf, images)).max() < 0.05


# ----------------------------------------------------------------- keras-hub as reference


def test_hugging_face_dir_equals_keras_hubs_own_converter(written):
    images = random_images((3, 12, 12, 3), seed=11)
    theirs = keras_hub.models.ViTImageClassifier.from_preset(str(written["hf"]))
    normalised = (images / 255.0 - 0.5) / 0.5  # keras-hub's model takes normalised pixels
    ours = load_checkpoint(str(written["hf"]))
    np.testing.assert_allclose(predict(ours, images), predict(theirs, normalised), atol=TOLERANCE)
    backbone = keras_hub.models.ViTBackbone.from_preset(str(written["hf"]))
    features = load_checkpoint(str(written["hf"]), include_top=False)
    np.testing.assert_allclose(predict(features, images), predict(backbone, normalised)[:, 0],
                               atol=TOLERANCE)


def test_hugging_face_dir_at_a_new_size_equals_keras_hub_with_the_jax_resized_table(written):
    # keras-hub's converter cannot resample (from_preset(image_shape=...) fails on the
    # position table): build its ViT at the new size and give it jax.image.resize's table.
    theirs = keras_hub.models.ViTImageClassifier.from_preset(str(written["hf"]))
    config = dict(theirs.backbone.get_config(), image_shape=(20, 16, 3))
    backbone = keras_hub.models.ViTBackbone.from_config(config)
    table_path = "vit_patching_and_embedding/position_embedding/embeddings"
    old = {v.path: v.numpy() for v in theirs.weights}
    for variable in backbone.weights:
        value = old[variable.path]
        if variable.path == table_path:
            value = jax_resample(value[None], (3, 3), (5, 4))[0]
        variable.assign(value)
    resized = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=TINY["classes"])
    resized.output_dense.set_weights(theirs.output_dense.get_weights())
    images = random_images((2, 20, 16, 3), seed=12)
    ours = load_checkpoint(str(written["hf"]), image_shape=(20, 16))
    np.testing.assert_allclose(predict(ours, images), predict(resized, (images / 255 - 0.5) / 0.5),
                               atol=TOLERANCE)


def _keras_hub_classifier(seed, **backbone_kwargs):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(image_shape=(12, 12, 3), patch_size=4, num_layers=2,
                                            num_heads=2, hidden_dim=16, mlp_dim=32,
                                            **backbone_kwargs)
    converter = keras_hub.layers.ViTImageConverter(image_size=(12, 12), scale=1 / 127.5,
                                                   offset=-1.0)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    classifier = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=4,
                                                     preprocessor=preprocessor,
                                                     intermediate_dim=6)
    rng = np.random.default_rng(seed)
    for variable in classifier.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape))
    return classifier


@pytest.mark.parametrize("backbone_kwargs", [{}, dict(use_mha_bias=False, use_mlp_bias=False)])
def test_keras_hub_object_and_preset_give_its_logits(tmp_path, backbone_kwargs):
    classifier = _keras_hub_classifier(13, **backbone_kwargs)
    images = random_images((3, 12, 12, 3), seed=14)
    expected = predict(classifier, images / 127.5 - 1.0)
    np.testing.assert_allclose(predict(load_checkpoint(classifier), images), expected,
                               atol=TOLERANCE)
    classifier.save_to_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(predict(load_checkpoint(str(tmp_path / "preset")), images),
                               expected, atol=TOLERANCE)


# -------------------------------------------------------------- heads and fine-tuning


def test_new_class_count_gets_a_zero_head_on_the_checkpoints_features(written):
    features = load_checkpoint(str(written["npz"]), include_top=False)
    model = load_checkpoint(str(written["npz"]), num_classes=3)
    images = random_images((2, 12, 12, 3), seed=15)
    assert not np.any(model.get_layer("head").kernel.numpy())
    np.testing.assert_array_equal(predict(model, images), np.zeros((2, 3)))
    features_of_model = keras.Model(model.input, model.get_layer("head").input)
    np.testing.assert_allclose(predict(features_of_model, images), predict(features, images),
                               atol=1e-6)


def test_replace_head_and_freeze_backbone(tmp_path):
    timm = timm_weights(seed=16, distilled=True)
    save_file(timm, str(tmp_path / "deit.safetensors"))
    model = load_checkpoint(str(tmp_path / "deit.safetensors"), num_heads=2, **IMAGENET)
    images = random_images((2, 12, 12, 3), seed=17)
    before = predict(keras.Model(model.input, model.get_layer("head").input), images)
    tuned = replace_head(model, 7)
    assert tuned.output_shape == (None, 7) and replace_head(tuned, 7) is tuned
    np.testing.assert_array_equal(predict(tuned, images), np.zeros((2, 7)))
    for name in ("head", "head_distillation"):
        assert tuned.get_layer(name).kernel.shape == (16, 7)
    after = predict(keras.Model(tuned.input, tuned.get_layer("head").input), images)
    np.testing.assert_array_equal(after, before)  # backbone shared, unchanged
    freeze_backbone(tuned)
    trainable = {v.path for v in tuned.trainable_weights}
    assert trainable == {"head/kernel", "head/bias", "head_distillation/kernel",
                         "head_distillation/bias"}
    with pytest.raises(ValueError, match="no 'head'"):
        replace_head(load_checkpoint(str(tmp_path / "deit.safetensors"), num_heads=2,
                                     include_top=False, **IMAGENET), 3)


def test_model_round_trips_through_a_keras_file(written, tmp_path):
    model = load_checkpoint(str(written["npz"]), dtype="float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    images = random_images((2, 12, 12, 3), seed=18)
    np.testing.assert_array_equal(predict(loaded, images), predict(model, images))


def test_mixed_precision_model_stays_close_with_float32_logits(written):
    model = load_checkpoint(str(written["hf"]), dtype="mixed_bfloat16")
    assert model.get_layer("encoder_block_0").compute_dtype == "bfloat16"
    images = random_images((2, 12, 12, 3), seed=19)
    logits = model(images)
    assert logits.dtype == "float32"
    reference = load_checkpoint(str(written["hf"]))
    np.testing.assert_allclose(predict(model, images), predict(reference, images), atol=0.3)


def test_open_checkpoint_reads_the_architecture_from_headers_only(written, monkeypatch):
    from keras_vit.models import open_checkpoint
    from keras_vit.models.checkpoints import sources

    def no_reading(self, key):
        raise AssertionError(f"read {key!r}")

    monkeypatch.setattr(sources.NpzSource, "read", no_reading)
    monkeypatch.setattr(sources.SafetensorsSource, "read", no_reading)
    npz = open_checkpoint(str(written["npz"]), image_shape=(16, 20)).architecture
    hf = open_checkpoint(str(written["hf"])).architecture
    for arch in (npz, hf):
        assert (arch.hidden_dim, arch.depth, arch.num_heads, arch.mlp_dim) == (16, 2, 2, 32)
        assert (arch.patch_size, arch.grid, arch.num_classes) == ((4, 4), (3, 3), 5)
    assert (npz.mlp_activation, npz.mean, npz.std) == ("gelu_tanh", (0.5,), (0.5,))
    assert (hf.mlp_activation, hf.layer_norm_epsilon) == ("gelu", 1e-6)


def test_fine_tuning_regularisation_reaches_the_blocks(written):
    model = load_checkpoint(str(written["npz"]), dropout=0.1, drop_path=0.2)
    assert model.get_layer("encoder_block_1").drop_path == pytest.approx(0.2)
    assert model.get_layer("encoder_block_0").dropout == pytest.approx(0.1)
