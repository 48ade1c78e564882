"""The fit of a training job: the ViT built and compiled by the recipe under a strategy, then trained.

Example:
>>> outcome = fit_model(config, data, model_kwargs(config, data.info), log=print)
>>> outcome.model.evaluate(data.test)
"""

import dataclasses
import time

from keras_vit.recipe import TrainingRecipe
from pipelines.training.config import recipe_of
from pipelines.training.init_checkpoint import checkpoint_model
from pipelines.training.run_folder import best_so_far, epoch_timer, training_callbacks


@dataclasses.dataclass
class FitOutcome:
    """What the fit leaves for evaluation: the model, epoch times and step counts."""

    model: object
    epoch_seconds: list
    steps_per_epoch: int
    seconds: float


def compile_for_training(model, total_steps, *, learning_rate, jit_compile=True, **recipe):
    """Compiles `model` with the project's recipe (`keras_vit.recipe.TrainingRecipe`).

    Args:
        model: a Keras model producing logits.
        total_steps: int. Optimizer steps of the whole run.
        learning_rate: float. Peak learning rate.
        jit_compile: bool. Compile the steps with XLA.
        **recipe: `weight_decay`, `warmup_fraction`, `clipnorm`, `label_smoothing`.

    Returns:
        `model`, compiled; labels may be int class indices or one-hot.

    Example:
    >>> compile_for_training(model, 100 * steps_per_epoch, learning_rate=1e-3)
    """
    return TrainingRecipe(learning_rate=learning_rate, **recipe).compile(
        model, total_steps, jit_compile=jit_compile)


def compiled_model(config, kwargs, steps_per_epoch):
    """The run's ViT, compiled by the run's recipe for `epochs * steps_per_epoch` steps.

    With `--init` the model is the checkpoint's (`load_checkpoint`), its
    backbone frozen with `--freeze-backbone`; build it under the strategy
    scope and after the dtype policy is set, like any model of the job.

    Args:
        config: a resolved `TrainConfig`.
        kwargs: `vision_transformer` arguments (`model_kwargs(config, info)`), or
            `load_checkpoint` arguments with `--init`.
        steps_per_epoch: int. Batches in one epoch of the training split.

    Returns:
        A compiled `keras.Model`.

    Example:
    >>> model = compiled_model(config, model_kwargs(config, info), steps_per_epoch=8)
    """
    from keras_vit.models import vision_transformer

    if config.init:
        model = checkpoint_model(config, kwargs)
    else:
        model = vision_transformer(**kwargs)
    return recipe_of(config).compile(model, config.epochs * steps_per_epoch,
                                     jit_compile=config.xla)


def trainable_parameters(model):
    """Number of values in `model`'s trainable weights (all but the head's are frozen
    with `--freeze-backbone`)."""
    import numpy as np

    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def fit_model(config, data, kwargs, log):
    """Builds, compiles and trains the run's ViT in `config.output_dir`.

    The model and its optimizer are created under the `--distribute` strategy
    (variables and slots live on its devices); labels stay int: the recipe's
    loss and metric take them as they are.

    Args:
        config: a resolved, checked `TrainConfig`.
        data: `pipelines.data.Datasets` (training split batched with
            `drop_remainder=True`).
        kwargs: `vision_transformer` arguments.
        log: callable taking one message per line.

    Returns:
        A `FitOutcome`.
    """
    import keras

    from pipelines.distribute import make_strategy

    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.distribute)
    steps_per_epoch = int(data.train.cardinality().numpy())
    with strategy.scope():  # variables and optimizer slots live on the strategy's devices
        model = compiled_model(config, kwargs, steps_per_epoch)
    trainable = trainable_parameters(model)
    frozen = (f" ({trainable:,} trainable)" if trainable != model.count_params() else "")
    source = f" from {config.init}" if config.init else ""
    log(f"model {model.name}{source}: {model.count_params():,} parameters{frozen}; "
        f"distribution: {config.distribute} ({strategy.num_replicas_in_sync} replica(s))")
    run_dir = config.output_dir
    timer = epoch_timer()
    start = time.perf_counter()
    # One iterator for the whole run (repeat + steps_per_epoch): Keras otherwise
    # tears the tf.data iterator down and builds a new one every epoch, and that
    # teardown stalled the start of epoch 2 for 17-32 s on some runs
    # (benchmarks/README.md, `job` entry).
    validate = config.fit_on == "train"  # else validation is part of the training data
    model.fit(data.train.repeat(), steps_per_epoch=steps_per_epoch,
              validation_data=data.validation if validate else None, epochs=config.epochs,
              callbacks=training_callbacks(run_dir, best_so_far(run_dir), timer,
                                           keep_best=validate),
              verbose=config.verbose)
    return FitOutcome(model=model, epoch_seconds=timer.seconds,
                      steps_per_epoch=steps_per_epoch, seconds=time.perf_counter() - start)
