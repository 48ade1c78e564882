"""The one training recipe of keras-vit: optimizer, schedule, loss, clipping and metric.

`keras-vit train` and `keras_vit.tuning.ViTHyperModel` both compile their
models through `TrainingRecipe.compile`, so a tuned trial and the training job
train the same model the same way:

* AdamW with decoupled weight decay;
* Keras' own `CosineDecay` with a linear warm-up (`warmup_cosine_schedule`,
  traced without a branch: `WarmupCosineDecay`):
  the rate rises linearly from 0 to the peak over the first
  `warmup_fraction` of the steps, then follows a cosine down to 0;
* gradient clipping by global norm (`clipnorm`);
* cross-entropy on logits with label smoothing (`SmoothedCrossentropy`) for int
  or one-hot labels;
* top-1 accuracy reported as `accuracy` (`LabelAccuracy`).

Backend-agnostic: only `keras` and `keras.ops`.

Example:
>>> recipe = TrainingRecipe(learning_rate=1e-3)
>>> recipe.compile(model, total_steps=90 * steps_per_epoch)
>>> model.fit(images, int_labels, epochs=90)
"""

import dataclasses
import math

import keras
from keras import ops

from keras_vit.layers.validation import is_int

DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_WARMUP_FRACTION = 0.1
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_CLIPNORM = 1.0


# ----------------------------------------------------------------- loss and metric


def _is_one_hot(y_true, y_pred, num_classes):
    return len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes != 1


def _class_indices(y_true, num_classes, y_pred):
    """Int class indices `(B,)` from int labels `(B,)`/`(B, 1)` or one-hot `(B, K)`."""
    if _is_one_hot(y_true, y_pred, num_classes):
        return ops.argmax(y_true, axis=-1)
    return ops.reshape(ops.cast(y_true, "int32"), (-1,))


@keras.saving.register_keras_serializable(package="keras_vit")
class SmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with label smoothing, for int or one-hot labels.

    Keras' sparse cross-entropy has no label smoothing; this one-hots int labels
    itself and then applies Keras' `categorical_crossentropy`, so `tf.data`
    pipelines of int labels work unchanged.

    Args:
        num_classes: int >= 2. Classes of the logits. Int labels must lie in
            `[0, num_classes)`: graph code cannot raise on a value, and an
            out-of-range label one-hots to zeros (a smaller, wrong loss); the
            training jobs' input pipelines only produce valid labels.
        label_smoothing: float in [0, 1).
        name: str. Loss name.

    Example:
    >>> loss = SmoothedCrossentropy(10, label_smoothing=0.1)
    >>> loss(np.array([3, 1]), logits)  # or one-hot labels of shape (2, 10)
    """

    def __init__(self, num_classes, label_smoothing=0.0, name="smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2; received {num_classes!r}")
        if not _is_number(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be a number in [0, 1); "
                             f"received {label_smoothing!r}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        if not _is_one_hot(y_true, y_pred, self.num_classes):
            y_true = ops.one_hot(_class_indices(y_true, self.num_classes, y_pred),
                                 self.num_classes)
        return keras.losses.categorical_crossentropy(
            ops.cast(y_true, y_pred.dtype), y_pred, from_logits=True,
            label_smoothing=self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class LabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy of logits against int or one-hot labels (reported as `accuracy`).

    Args:
        num_classes: int. Classes of the logits.
        name: str. Metric name; `val_` is prefixed for validation data.

    Example:
    >>> model.compile(..., metrics=[LabelAccuracy(10)])
    """

    def __init__(self, num_classes, name="accuracy", dtype=None):
        self.num_classes = int(num_classes)
        super().__init__(fn=self._accuracy, name=name, dtype=dtype)

    def _accuracy(self, y_true, y_pred):
        labels = _class_indices(y_true, self.num_classes, y_pred)
        predicted = ops.argmax(y_pred, axis=-1)
        return ops.cast(ops.equal(ops.cast(labels, "int32"), ops.cast(predicted, "int32")),
                        "float32")

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


# ------------------------------------------------------------------------ schedule


def steps_per_epoch(num_examples, batch_size, drop_remainder=False):
    """Optimizer steps in one pass over `num_examples` at `batch_size`.

    Args:
        num_examples: int > 0.
        batch_size: int > 0.
        drop_remainder: bool. The last, smaller batch is dropped (as
            `pipelines.data.load_datasets(drop_remainder=True)` does when at
            least one full batch exists).

    Returns:
        int >= 1.

    Example:
    >>> steps_per_epoch(1149, 128), steps_per_epoch(1149, 128, drop_remainder=True)
    (9, 8)
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if not is_int(value) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
    if drop_remainder:
        return max(num_examples // batch_size, 1)
    return math.ceil(num_examples / batch_size)


@keras.saving.register_keras_serializable(package="keras_vit")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' `CosineDecay` with warm-up, its two phases selected without a branch.

    The same rates as the parent (tests/test_recipe.py compares them step by
    step), the same arguments and config. The parent picks the phase with
    `ops.cond`, and AdamW evaluates the schedule once per variable for its
    weight decay: traced in a `tf.function`, each `cond` costs ~40 ms, ~5 s of
    the first step of the sequence preset (125 variables; 24 -> 19.6 s,
    2-core Xeon). Both phases are a few scalar ops, so they are both computed
    and `ops.where` picks one.

    Example:
    >>> schedule = WarmupCosineDecay(0.0, 900, warmup_target=1e-3, warmup_steps=100)
    >>> float(schedule(100))
    0.001
    """

    def __call__(self, step):
        if self.warmup_target is None:
            return super().__call__(step)  # no warm-up: no branch in the parent either
        with keras.name_scope(self.name):
            initial = ops.convert_to_tensor(self.initial_learning_rate)
            dtype = initial.dtype
            decay_steps = ops.cast(self.decay_steps, dtype)
            target = ops.cast(self.warmup_target, dtype)
            warmup_steps = ops.cast(self.warmup_steps, dtype)
            step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
            # The parent's arithmetic, in its order: the same rates to the bit. max(., 1):
            # with no warm-up this phase is never picked; keep it finite.
            warming = (target - initial) * (step / ops.maximum(warmup_steps, 1.0)) + initial
            progress = (step - warmup_steps) / decay_steps
            cosine = 0.5 * (1.0 + ops.cos(ops.multiply(ops.array(math.pi, dtype=dtype),
                                                       progress)))
            decaying = target * ((1 - self.alpha) * cosine + self.alpha)
            return ops.where(step < warmup_steps, warming, decaying)


def warmup_cosine_schedule(learning_rate, total_steps, warmup_fraction=DEFAULT_WARMUP_FRACTION):
    """Keras' `CosineDecay` with a linear warm-up over `warmup_fraction` of the steps.

    `CosineDecay(0.0, decay_steps, warmup_target=peak, warmup_steps=w)` rises
    linearly from 0 to `peak` over `w` steps, then decays as
    `peak * (1 + cos(pi * t / decay_steps)) / 2` (Keras'
    `learning_rate_schedule.py`); `WarmupCosineDecay` is that schedule, traced
    without a branch.

    Args:
        learning_rate: float. Peak learning rate, reached at the end of warm-up.
        total_steps: int or None. Optimizer steps of the whole run; None gives
            the constant `learning_rate` (the length of the run is unknown).
        warmup_fraction: float in [0, 1). Share of the steps spent warming up.

    Returns:
        A `WarmupCosineDecay` (a `keras.optimizers.schedules.CosineDecay`), or
        the float `learning_rate`.

    Example:
    >>> schedule = warmup_cosine_schedule(1e-3, total_steps=1000)
    >>> float(schedule(100))  # the peak, at the end of the warm-up
    0.001
    """
    if not _is_number(warmup_fraction) or not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"`warmup_fraction` must be a number in [0, 1); "
                         f"received {warmup_fraction!r}")
    if total_steps is not None and (not is_int(total_steps) or total_steps < 0):
        raise ValueError(f"`total_steps` must be None or an integer >= 0; "
                         f"received {total_steps!r}")
    if not total_steps:
        return float(learning_rate)
    warmup_steps = int(warmup_fraction * total_steps)
    return WarmupCosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=float(learning_rate), warmup_steps=warmup_steps)


# -------------------------------------------------------------------------- recipe


def _is_number(value):
    """A finite int or float (not a bool): `inf` or `nan` rates would train to NaN."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """The optimisation hyperparameters of a run and how they compile a model.

    Args:
        learning_rate: float > 0. Peak AdamW learning rate.
        weight_decay: float >= 0. AdamW's decoupled weight decay.
        warmup_fraction: float in [0, 1). Share of the steps of linear warm-up.
        label_smoothing: float in [0, 1).
        clipnorm: float > 0. Gradient clipping norm.

    Example:
    >>> recipe = TrainingRecipe(learning_rate=3e-3, label_smoothing=0.0)
    >>> recipe.compile(model, total_steps=900, jit_compile=False)
    """

    learning_rate: float
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    clipnorm: float = DEFAULT_CLIPNORM

    def __post_init__(self):
        for name in ("learning_rate", "clipnorm"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"`{name}` must be a finite number > 0; received {value!r}")
        for name in ("warmup_fraction", "label_smoothing"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1); received {value!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be a finite number >= 0; "
                             f"received {self.weight_decay!r}")

    def schedule(self, total_steps):
        """The learning rate over `total_steps` (see `warmup_cosine_schedule`)."""
        return warmup_cosine_schedule(self.learning_rate, total_steps, self.warmup_fraction)

    def optimizer(self, total_steps):
        """AdamW on the warm-up + cosine schedule, clipping gradients by norm."""
        return keras.optimizers.AdamW(self.schedule(total_steps),
                                      weight_decay=float(self.weight_decay),
                                      clipnorm=float(self.clipnorm))

    def loss(self, num_classes):
        """Label-smoothed cross-entropy on logits, int or one-hot labels."""
        return SmoothedCrossentropy(num_classes, self.label_smoothing)

    def metrics(self, num_classes):
        """`[LabelAccuracy]`: logged as `accuracy` and `val_accuracy`."""
        return [LabelAccuracy(num_classes)]

    def compile(self, model, total_steps, *, jit_compile=True):
        """Compiles `model` (logits out) with this recipe; returns it.

        The optimizer's slots are created at once, so a checkpoint restores
        them whole (Hyperband continuing a trial, `BackupAndRestore`) instead of
        skipping them.

        Args:
            model: a Keras model producing logits `(B, num_classes)`.
            total_steps: int or None. Optimizer steps of the whole run.
            jit_compile: bool or "auto". XLA-compile the train and predict steps.

        Returns:
            `model`, compiled.
        """
        num_classes = int(model.output_shape[-1])
        model.compile(self.optimizer(total_steps), self.loss(num_classes),
                      metrics=self.metrics(num_classes), jit_compile=jit_compile)
        model.optimizer.build(model.trainable_variables)
        return model
