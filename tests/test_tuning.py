"""Tests of `keras_vit.tuning.ViTHyperModel` with every keras-tuner tuner.

Everything runs tiny trials on the embedded digits (8x8): depth 1, width 16-32,
one or two epochs of 128 examples, XLA off, so each trial costs seconds.
"""

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_vit.tuning import (
    LabelAccuracy,
    SmoothedCrossentropy,
    ViTHyperModel,
    default_patch_sizes,
    resolve_search_space,
    split_width_heads,
    width_head_pairs,
)

IMAGE_SHAPE = (8, 8, 1)
TRAIN_EXAMPLES = 128
# Small enough for seconds per trial; still two widths so trials differ.
TINY_SPACE = {"depth": 1, "hidden_dim": [16, 32], "num_heads": [2], "patch_size": [4],
              "batch_size": 64, "mlp_ratio": 2}


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Unbatched train examples, one batched validation batch, and a fixed image batch."""
    from pipelines.data import load_datasets

    data = load_datasets("digits", batch_size=64, data_dir=str(tmp_path_factory.mktemp("tfds")))
    validation = data.validation.take(1)
    images = next(iter(data.test))[0].numpy()[:16]
    return data.train.unbatch().take(TRAIN_EXAMPLES), validation, images


def tiny_hypermodel(search_space=None, **kwargs):
    space = dict(TINY_SPACE, **(search_space or {}))
    kwargs.setdefault("epochs", 1)
    return ViTHyperModel(IMAGE_SHAPE, 10, space, num_train_examples=TRAIN_EXAMPLES,
                         jit_compile=False, dtype_policy="float32", **kwargs)


class Recorder(keras.callbacks.Callback):
    """Per trial: logits on fixed images at the end, epochs run, optimizer step at start.

    Tuners deep-copy callbacks for each trial, so the records live on the class.
    """

    images = None
    trials = []

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        Recorder.trials.append({"epochs": [], "start_step": int(optimizer.iterations.numpy())})

    def on_epoch_begin(self, epoch, logs=None):
        Recorder.trials[-1]["epochs"].append(epoch)

    def on_train_end(self, logs=None):
        Recorder.trials[-1]["logits"] = np.asarray(self.model(Recorder.images, training=False))


@pytest.fixture
def recorder(digits):
    Recorder.images, Recorder.trials = digits[2], []
    return Recorder()


def search(tuner, digits, recorder, epochs=1):
    train, validation, _ = digits
    tuner.search(train, validation_data=validation, epochs=epochs, callbacks=[recorder],
                 verbose=0)
    return tuner


def layer_summary(model):
    return [(layer.__class__.__name__, layer.name) for layer in model.layers]


# -------------------------------------------------------------- search-space checks


def test_patch_size_choices_only_include_divisors():
    assert default_patch_sizes((8, 8, 1)) == [1, 2, 4]
    assert default_patch_sizes((12, 8, 3)) == [1, 2, 4]
    assert default_patch_sizes((32, 32, 3)) == [2, 4, 8, 16]
    for shape in ((8, 8, 1), (12, 8, 3), (28, 28, 1), (224, 224, 3), (7, 7, 1)):
        hypermodel = ViTHyperModel(shape, 10)
        hp = kt.HyperParameters()
        hypermodel.declare(hp)
        choices = hp._hps["patch_size"][0].values
        assert choices and all(shape[0] % p == 0 and shape[1] % p == 0 for p in choices), shape


def test_width_and_heads_are_searched_as_valid_pairs_only():
    space = resolve_search_space(IMAGE_SHAPE, {"hidden_dim": [16, 24, 32], "num_heads": [2, 3, 4]})
    pairs = width_head_pairs(space)
    assert pairs == ["16x2", "16x4", "24x2", "24x3", "24x4", "32x2", "32x4"]
    assert all(w % h == 0 for w, h in map(split_width_heads, pairs))
    hypermodel = ViTHyperModel(IMAGE_SHAPE, 10, {"hidden_dim": [16, 24, 32],
                                                  "num_heads": [2, 3, 4]})
    settings = hypermodel.settings(kt.HyperParameters())
    assert settings["hidden_dim"] % settings["num_heads"] == 0


@pytest.mark.parametrize("space, message", [
    ({"hidden_dim": [16, 32], "num_heads": [3]}, "num_heads': 3 heads divide none"),
    ({"hidden_dim": [16], "num_heads": [2, 5]}, "num_heads': 5 heads divide none"),
    ({"depth": []}, "'depth': empty list of choices"),
    ({"pooling": []}, "'pooling': empty list of choices"),
    ({"patch_size": [2, 3]}, "'patch_size': 3 does not divide the image size 8x8"),
    ({"deptth": [2]}, "unknown search space key 'deptth' (did you mean 'depth'?)"),
    ({"pooling": ["max"]}, "'pooling': 'max' is not one of"),
    ({"dropout": 1.5}, "'dropout': 1.5 is not in [0, 1)"),
    ({"weight_decay": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "log sampling needs min > 0"),
    ({"hidden_dim": {"min": 16, "max": 64}}, "'hidden_dim': give a list of values"),
])
def test_invalid_search_space_fails_in_the_constructor(space, message):
    with pytest.raises(ValueError) as error:
        ViTHyperModel(IMAGE_SHAPE, 10, space)
    assert message in str(error.value)


def test_search_space_forms_fixed_choice_range():
    hypermodel = ViTHyperModel(IMAGE_SHAPE, 10, {
        "dropout": 0.0, "depth": [4, 2], "hidden_dim": {"min": 16, "max": 48, "step": 16},
        "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
        "position_embedding": ["learned", "sincos2d"]})
    space = hypermodel.space
    assert space["dropout"] == {"value": 0.0}
    assert space["depth"] == {"values": [2, 4], "default": 4}  # sorted, first given is default
    assert space["hidden_dim"]["values"] == [16, 32, 48]
    assert space["learning_rate"]["sampling"] == "log"
    hp = kt.HyperParameters()
    values = hypermodel.declare(hp)
    assert values["depth"] == 4 and values["position_embedding"] == "learned"
    assert "attention_dropout" not in values  # optional keys are only searched on request


def test_loss_and_metric_accept_int_and_one_hot_labels():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]], "float32")
    labels = np.array([0, 1])
    one_hot = np.eye(3, dtype="float32")[labels]
    loss = SmoothedCrossentropy(3, label_smoothing=0.1)
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    expected = float(reference(one_hot, logits))
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(one_hot, logits)) == pytest.approx(expected, rel=1e-6)
    for y in (labels, one_hot):
        metric = LabelAccuracy(3)
        metric.update_state(y, logits)
        assert float(metric.result()) == pytest.approx(0.5)


# ------------------------------------------------------------------------- tuners


@pytest.mark.slow
def test_random_search_best_model_reloads_with_its_layers_and_predictions(
        digits, recorder, tmp_path):
    hypermodel = tiny_hypermodel()
    tuner = search(kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=2, seed=3,
                                   directory=str(tmp_path), project_name="random"),
                   digits, recorder)
    assert len(recorder.trials) == 2
    best_trial = tuner.oracle.get_best_trials(1)[0]
    trained_logits = recorder.trials[int(best_trial.trial_id)]["logits"]

    best = tuner.get_best_models(1)[0]
    names = {cls for cls, _ in layer_summary(best)}
    assert {"PatchEmbedding", "PositionEmbedding", "TransformerEncoderBlock",
            "TokenPooling"} <= names
    np.testing.assert_allclose(np.asarray(best(digits[2], training=False)), trained_logits,
                               atol=1e-5)

    # get_best_hyperparameters rebuilds the very same architecture.
    best_hp = tuner.get_best_hyperparameters(1)[0]
    rebuilt = hypermodel.build(best_hp)
    assert rebuilt.count_params() == best.count_params()
    assert rebuilt.get_config() == best.get_config()
    assert layer_summary(rebuilt) == layer_summary(best)

    # ...and the reloaded model survives a full .keras round trip, custom layers included.
    path = tmp_path / "best.keras"
    best.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(digits[2], training=False)), trained_logits,
                               atol=1e-5)


@pytest.mark.slow
def test_hyperband_passes_epochs_and_initial_epoch(digits, recorder, tmp_path):
    hypermodel = tiny_hypermodel({"hidden_dim": [16]}, epochs=2)
    tuner = kt.Hyperband(hypermodel, objective="val_accuracy", max_epochs=2, factor=2, seed=1,
                         directory=str(tmp_path), project_name="hyperband")
    # Two 1-epoch trials, then the better one continues for its second epoch.
    tuner.oracle.max_trials = 3
    search(tuner, digits, recorder, epochs=2)
    trials = [tuner.oracle.trials[i] for i in sorted(tuner.oracle.trials)]
    assert [t.status for t in trials] == ["COMPLETED"] * 3
    assert [t.hyperparameters.values["tuner/epochs"] for t in trials] == [1, 1, 2]
    assert trials[2].hyperparameters.values["tuner/initial_epoch"] == 1
    assert [r["epochs"] for r in recorder.trials] == [[0], [0], [1]]
    steps_per_epoch = hypermodel.steps_per_epoch(64)
    # The continuation resumes the schedule (and the optimizer) where epoch 1 ended.
    assert recorder.trials[2]["start_step"] == steps_per_epoch


@pytest.mark.slow
def test_the_schedule_spans_every_epoch_on_a_dataset_of_unknown_size(digits):
    """An unbatched `take()` has no known size; the optimizer still counts one step per
    batch (Keras alone counts an extra one per epoch there), so the warm-up + cosine
    schedule, sized from `num_train_examples`, reaches its end with the last epoch."""
    train, validation, _ = digits
    assert int(train.cardinality()) == -2
    hypermodel = tiny_hypermodel({"hidden_dim": [16]}, epochs=3)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, train, validation_data=validation, epochs=3, verbose=0)
    steps = hypermodel.steps_per_epoch(64)
    assert steps == TRAIN_EXAMPLES // 64
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    assert len(history.history["loss"]) == 3


@pytest.mark.slow
def test_bayesian_optimization_runs(digits, recorder, tmp_path):
    tuner = search(kt.BayesianOptimization(tiny_hypermodel(), objective="val_accuracy",
                                           max_trials=1, seed=2, directory=str(tmp_path),
                                           project_name="bayesian"),
                   digits, recorder)
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED" and 0.0 <= trial.score <= 1.0


@pytest.mark.slow
def test_grid_search_walks_the_grid_from_the_defaults(digits, recorder, tmp_path):
    space = {"mlp_ratio": 2, "pooling": ["gap", "token"], "dropout": 0.0, "drop_path": 0.0,
             "learning_rate": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
             "hidden_dim": [16]}
    tuner = search(kt.GridSearch(tiny_hypermodel(space), objective="val_accuracy",
                                 max_trials=2, directory=str(tmp_path), project_name="grid"),
                   digits, recorder)
    values = [tuner.oracle.trials[i].hyperparameters.values for i in sorted(tuner.oracle.trials)]
    assert [v["pooling"] for v in values] == ["gap", "token"]
    assert all(t.status == "COMPLETED" for t in tuner.oracle.trials.values())


@pytest.mark.slow
def test_works_inside_a_user_written_tuner(digits, recorder, tmp_path):
    class MyTuner(kt.Tuner):
        """Builds and fits through the hypermodel, reports its own metric dict."""

        def run_trial(self, trial, *args, **kwargs):
            hp = trial.hyperparameters
            model = self.hypermodel.build(hp)
            history = self.hypermodel.fit(hp, model, *args, **kwargs)
            return {"val_accuracy": max(history.history["val_accuracy"])}

    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"),
                                           max_trials=1, seed=4)
    tuner = search(MyTuner(oracle, tiny_hypermodel(), directory=str(tmp_path),
                           project_name="mine"), digits, recorder)
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED" and 0.0 <= trial.score <= 1.0
    assert len(recorder.trials) == 1
