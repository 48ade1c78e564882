"""Tests of the one training recipe (keras_vit/recipe.py) and the shared choice lists.

Closed-form references: the warm-up + cosine schedule and the smoothed
cross-entropy re-implemented in numpy.
"""

import math

import keras
import numpy as np
import pytest

from keras_vit.recipe import (
    LabelAccuracy,
    SmoothedCrossentropy,
    TrainingRecipe,
    steps_per_epoch,
    warmup_cosine_schedule,
)


def reference_rate(step, peak, total_steps, warmup_fraction):
    """Linear warm-up from 0 to `peak`, then a half cosine down to 0 (numpy, by hand)."""
    warmup = int(warmup_fraction * total_steps)
    if step < warmup:
        return peak * step / warmup
    decay = max(total_steps - warmup, 1)
    progress = min(step - warmup, decay) / decay
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total_steps, warmup_fraction", [(100, 0.1), (37, 0.25), (50, 0.0)])
def test_schedule_is_linear_warmup_then_cosine(total_steps, warmup_fraction):
    schedule = warmup_cosine_schedule(2e-3, total_steps, warmup_fraction)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    for step in range(0, total_steps + 5):
        expected = reference_rate(step, 2e-3, total_steps, warmup_fraction)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step
    assert float(schedule(int(warmup_fraction * total_steps))) == pytest.approx(2e-3)


@pytest.mark.parametrize("warmup_steps, alpha, initial", [(10, 0.0, 0.0), (0, 0.0, 0.0),
                                                           (7, 0.1, 1e-4), (1, 0.0, 5e-4)])
def test_branch_free_schedule_equals_keras_cosine_decay(warmup_steps, alpha, initial):
    from keras_vit.recipe import WarmupCosineDecay

    options = dict(initial_learning_rate=initial, decay_steps=40, alpha=alpha,
                   warmup_target=2e-3, warmup_steps=warmup_steps)
    ours, keras_own = WarmupCosineDecay(**options), keras.optimizers.schedules.CosineDecay(**options)
    steps = np.arange(0, 60)
    # To the bit: a run keeps its trajectory whichever of the two computes its rates.
    np.testing.assert_array_equal([float(ours(step)) for step in steps],
                                  [float(keras_own(step)) for step in steps])
    assert ours.get_config() == keras_own.get_config()
    no_warmup = dict(options, warmup_target=None)
    assert float(WarmupCosineDecay(**no_warmup)(13)) == pytest.approx(
        float(keras.optimizers.schedules.CosineDecay(**no_warmup)(13)))


def test_branch_free_schedule_survives_a_saved_optimizer(tmp_path):
    """A model compiled with the recipe saves to .keras and reloads with its schedule."""
    from keras_vit.recipe import WarmupCosineDecay

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    TrainingRecipe(learning_rate=1e-3).compile(model, total_steps=100, jit_compile=False)
    model.save(tmp_path / "m.keras")
    schedule = keras.saving.load_model(tmp_path / "m.keras").optimizer._learning_rate
    assert isinstance(schedule, WarmupCosineDecay)
    assert float(schedule(50)) == pytest.approx(float(model.optimizer._learning_rate(50)))


def test_schedule_without_a_length_is_the_constant_peak():
    assert warmup_cosine_schedule(1e-3, None) == 1e-3


def test_steps_per_epoch_counts_batches_like_tf_data():
    assert steps_per_epoch(1149, 128) == 9
    assert steps_per_epoch(1149, 128, drop_remainder=True) == 8
    assert steps_per_epoch(100, 128, drop_remainder=True) == 1  # the only batch is kept
    assert steps_per_epoch(256, 128) == steps_per_epoch(256, 128, drop_remainder=True) == 2


@pytest.mark.parametrize("call, message", [
    (lambda: steps_per_epoch(0, 128), "`num_examples` must be a positive integer; received 0"),
    (lambda: steps_per_epoch(10, 0), "`batch_size` must be a positive integer; received 0"),
    (lambda: warmup_cosine_schedule(1e-3, 100, warmup_fraction=1.0),
     "`warmup_fraction` must be a number in [0, 1); received 1.0"),
    (lambda: warmup_cosine_schedule(1e-3, -5), "`total_steps` must be None or an integer >= 0"),
    (lambda: SmoothedCrossentropy(0), "`num_classes` must be an integer >= 2; received 0"),
    (lambda: SmoothedCrossentropy(10, label_smoothing=1.5),
     "`label_smoothing` must be a number in [0, 1); received 1.5"),
])
def test_recipe_helpers_reject_bad_arguments(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_smoothed_crossentropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 3, 1, 1, 2])
    smoothing = 0.2
    targets = np.eye(4)[labels] * (1 - smoothing) + smoothing / 4
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = float(np.mean(-(targets * log_softmax).sum(axis=-1)))
    loss = SmoothedCrossentropy(4, label_smoothing=smoothing)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(np.eye(4, dtype="float32")[labels], logits)) == pytest.approx(expected,
                                                                                   rel=1e-5)
    metric = LabelAccuracy(4)
    metric.update_state(labels, logits)
    assert float(metric.result()) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_recipe_compiles_adamw_with_clipping_schedule_loss_and_accuracy():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    recipe = TrainingRecipe(learning_rate=3e-3, weight_decay=0.02, warmup_fraction=0.2,
                            label_smoothing=0.05, clipnorm=0.5)
    recipe.compile(model, total_steps=50, jit_compile=False)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    config = optimizer.get_config()
    assert config["weight_decay"] == pytest.approx(0.02)
    assert config["clipnorm"] == pytest.approx(0.5)
    assert config["learning_rate"]["config"] == {
        "initial_learning_rate": 0.0, "decay_steps": 40, "alpha": 0.0, "name": "CosineDecay",
        "warmup_target": 3e-3, "warmup_steps": 10}
    assert optimizer.built  # slots exist before the first step (checkpoints restore them)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.05)
    history = model.fit(np.ones((8, 3), "float32"), np.arange(8) % 4, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", 0.0, "`learning_rate` must be a finite number > 0; received 0.0"),
    ("learning_rate", float("inf"), "`learning_rate` must be a finite number > 0; received inf"),
    ("clipnorm", -1.0, "`clipnorm` must be a finite number > 0"),
    ("clipnorm", float("inf"), "`clipnorm` must be a finite number > 0; received inf"),
    ("label_smoothing", 1.0, "`label_smoothing` must be a number in [0, 1); received 1.0"),
    ("label_smoothing", float("nan"), "`label_smoothing` must be a number in [0, 1)"),
    ("warmup_fraction", -0.1, "`warmup_fraction` must be a number in [0, 1)"),
    ("weight_decay", -0.5, "`weight_decay` must be a finite number >= 0; received -0.5"),
    ("weight_decay", float("nan"), "`weight_decay` must be a finite number >= 0; received nan"),
    ("weight_decay", float("inf"), "`weight_decay` must be a finite number >= 0; received inf"),
])
def test_recipe_rejects_bad_values(field, value, message):
    values = dict(learning_rate=1e-3)
    values[field] = value
    with pytest.raises(ValueError) as error:
        TrainingRecipe(**values)
    assert message in str(error.value)


def test_parsers_take_their_choices_from_the_shared_constants():
    from keras_vit.layers.pooling import POOLING_MODES
    from keras_vit.models.vit import POSITION_EMBEDDINGS
    from pipelines import options, train, tune
    from pipelines.data import AUGMENTATIONS
    from pipelines.distribute import STRATEGIES
    from pipelines.precision import PRECISIONS
    from pipelines.training.config import FIT_ON

    # The constants are the implementations' own tuples, not copies.
    assert options.AUGMENTATIONS is AUGMENTATIONS and "affine" in AUGMENTATIONS
    assert options.POOLINGS is POOLING_MODES and options.POSITION_EMBEDDINGS is POSITION_EMBEDDINGS
    assert options.PRECISIONS is PRECISIONS and options.STRATEGIES is STRATEGIES

    def choices(parser):
        return {action.dest: tuple(action.choices) for action in parser._actions
                if action.choices is not None}

    train_choices, tune_choices = choices(train.build_parser()), choices(tune.build_parser())
    from pipelines.data import BAD_IMAGE_POLICIES

    assert train_choices == {"augmentation": AUGMENTATIONS, "pooling": POOLING_MODES,
                             "on_bad_image": BAD_IMAGE_POLICIES, "task": options.TASKS,
                             "position_embedding": POSITION_EMBEDDINGS,
                             "precision": PRECISIONS, "distribute": STRATEGIES,
                             "fit_on": FIT_ON, "verbose": options.VERBOSITY}
    assert tune_choices == {"augmentation": AUGMENTATIONS, "tuner": options.TUNERS,
                            "on_bad_image": BAD_IMAGE_POLICIES,
                            "precision": PRECISIONS, "verbose": options.VERBOSITY}


def test_every_tuner_choice_builds_a_tuner(tmp_path):
    from keras_vit.tuning import ViTHyperModel
    from pipelines.options import TUNERS
    from pipelines.tuning.tuners import make_tuner

    hypermodel = ViTHyperModel((8, 8, 1), 10, {"depth": 1, "hidden_dim": [16], "num_heads": [2]})
    for kind in TUNERS:
        tuner = make_tuner(kind, hypermodel, objective="val_accuracy", max_trials=2, epochs=2,
                           directory=str(tmp_path), project_name=kind)
        assert tuner.oracle.max_trials == 2, kind
    with pytest.raises(ValueError, match="'sgd'"):
        make_tuner("sgd", hypermodel, objective="val_accuracy", max_trials=1, epochs=1,
                   directory=str(tmp_path), project_name="sgd")
