"""Hyperparameter search over Vision Transformers with keras-tuner.

`ViTHyperModel` turns `keras_vit.models.vision_transformer` into a
`keras_tuner.HyperModel` with a default search space (patch size, depth, width,
heads, MLP ratio, pooling, dropout, drop path, learning rate, weight decay,
label smoothing and batch size) that a plain dict narrows or widens. It works
with every keras-tuner tuner (RandomSearch, Hyperband, BayesianOptimization,
GridSearch) and inside user-written ones, and stays backend-agnostic: the
models, loss and metric use `keras.ops` only.

Search-space values (`search_space={key: spec}`):

* a scalar, e.g. `"dropout": 0.0`: fixed, not searched;
* a list, e.g. `"depth": [2, 4]` (or `{"values": [...], "default": v}`): a choice;
* `{"min": 1e-4, "max": 3e-3, "sampling": "log"}` (optional `"step"`,
  `"default"`): a range; `patch_size`, `hidden_dim` and `num_heads` take ranges
  only with a linear `"step"` (they are expanded into a list);
* `None`: the default of `DEFAULT_SEARCH_SPACE`.

Width and heads are searched as one choice over the valid pairs, hyperparameter
`width_heads` with values like `"64x4"` (`hidden_dim` x `num_heads`), so no trial
ever gets a head count that does not divide its width, and grid search,
Bayesian optimisation and random search all see one plain categorical value.

Example:
>>> import keras_tuner as kt
>>> from keras_vit.tuning import ViTHyperModel
>>> hypermodel = ViTHyperModel((8, 8, 1), 10, {"depth": [1, 2], "hidden_dim": [32, 64]},
...                            epochs=5, num_train_examples=1149)
>>> tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=4)
>>> tuner.search(train_examples, validation_data=validation_examples, epochs=5)
>>> best = tuner.get_best_models()[0]
"""

import difflib
import math

import keras
import keras_tuner
from keras import ops

from keras_vit.models.vit import vision_transformer

#: The search space used for keys a user does not override. `patch_size: None`
#: means every patch size dividing the image into 4 to 256 patches.
DEFAULT_SEARCH_SPACE = {
    "patch_size": None,
    "depth": {"values": [2, 4, 6], "default": 4},
    "hidden_dim": {"values": [64, 128, 192], "default": 64},
    "num_heads": {"values": [2, 3, 4], "default": 4},
    "mlp_ratio": {"values": [2, 4], "default": 2},
    "pooling": ["gap", "token"],
    "dropout": [0.0, 0.1],
    "drop_path": [0.0, 0.1],
    "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log", "default": 1e-3},
    "weight_decay": {"min": 1e-3, "max": 0.1, "sampling": "log", "default": 0.05},
    "label_smoothing": [0.1, 0.0],
    "batch_size": {"values": [32, 64, 128], "default": 64},
}

#: Keys searchable on request only; left out of the space, they take this value.
OPTIONAL_SEARCH_KEYS = {"position_embedding": "learned", "attention_dropout": 0.0}

#: Patch counts the default patch sizes keep between (inclusive).
DEFAULT_PATCH_COUNT_RANGE = (4, 256)

WIDTH_HEADS = "width_heads"
SAMPLINGS = ("linear", "log", "reverse_log")

_INT_KEYS = ("patch_size", "depth", "hidden_dim", "num_heads", "batch_size")
_RATE_KEYS = ("dropout", "drop_path", "attention_dropout", "label_smoothing")
_CATEGORIES = {"pooling": ("token", "gap"), "position_embedding": ("learned", "sincos2d")}
# Keys that become part of the model architecture and must be known exactly
# (a list), not sampled from a continuous range.
_LIST_ONLY_KEYS = ("patch_size", "hidden_dim", "num_heads")
# Order of the hyperparameters: architecture first, then optimisation. Grid
# search varies the last one fastest.
_ORDER = ("patch_size", "depth", WIDTH_HEADS, "mlp_ratio", "pooling", "position_embedding",
          "dropout", "attention_dropout", "drop_path", "learning_rate", "weight_decay",
          "label_smoothing", "batch_size")


# ----------------------------------------------------------------- loss and metric


def _class_indices(y_true, num_classes, y_pred):
    """Int class indices `(B,)` from int labels `(B,)`/`(B, 1)` or one-hot `(B, K)`."""
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes != 1:
        return ops.argmax(y_true, axis=-1)
    return ops.reshape(ops.cast(y_true, "int32"), (-1,))


@keras.saving.register_keras_serializable(package="keras_vit")
class SmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with label smoothing, for int or one-hot labels.

    Keras' sparse cross-entropy has no label smoothing; this one-hots int labels
    itself, so `tf.data` pipelines of int labels work unchanged.

    Args:
        num_classes: int. Classes of the logits.
        label_smoothing: float in [0, 1).
        name: str. Loss name.

    Example:
    >>> loss = SmoothedCrossentropy(10, label_smoothing=0.1)
    >>> loss(np.array([3, 1]), logits)  # or one-hot labels of shape (2, 10)
    """

    def __init__(self, num_classes, label_smoothing=0.0, name="smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        if not (len(y_true.shape) == len(y_pred.shape)
                and y_true.shape[-1] == self.num_classes != 1):
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


# ------------------------------------------------------------- search-space parsing


def default_patch_sizes(image_shape, patch_counts=DEFAULT_PATCH_COUNT_RANGE):
    """Patch sizes dividing both image sides into `patch_counts` patches (inclusive).

    Falls back to every common divisor when none gives a patch count in range.

    Args:
        image_shape: (height, width, channels).
        patch_counts: (min, max) number of patches.

    Returns:
        Sorted list of int patch sizes.

    Example:
    >>> default_patch_sizes((8, 8, 1))
    [1, 2, 4]
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    divisors = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    low, high = patch_counts
    sizes = [p for p in divisors if low <= (height // p) * (width // p) <= high]
    return sizes or divisors


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key, value):
    """Returns `value` in its canonical type, or raises naming the key and value."""
    if key in _INT_KEYS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"search space {key!r}: {value!r} is not a positive integer")
        return value
    if key in _CATEGORIES:
        if value not in _CATEGORIES[key]:
            raise ValueError(f"search space {key!r}: {value!r} is not one of "
                             f"{list(_CATEGORIES[key])}")
        return value
    if not _is_number(value):
        raise ValueError(f"search space {key!r}: {value!r} is not a number")
    if key in _RATE_KEYS and not 0.0 <= value < 1.0:
        raise ValueError(f"search space {key!r}: {value!r} is not in [0, 1)")
    if key == "weight_decay" and value < 0:
        raise ValueError(f"search space {key!r}: {value!r} is negative")
    if key in ("learning_rate", "mlp_ratio") and not value > 0:
        raise ValueError(f"search space {key!r}: {value!r} is not positive")
    # Rates and learning rates are floats even when written as 0 or 1.
    return value if key == "mlp_ratio" else float(value)


def _unique(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _choice(key, values, default=None):
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"search space {key!r}: empty list of choices; give at least one "
                         "value (or a single value to fix it)")
    values = _unique(_check_value(key, v) for v in values)
    if default is None:
        default = values[0]
    default = _check_value(key, default)
    if default not in values:
        raise ValueError(f"search space {key!r}: default {default!r} is not one of {values}")
    if all(_is_number(v) for v in values):
        if any(isinstance(v, float) for v in values):  # keras-tuner wants one type
            values, default = [float(v) for v in values], float(default)
        values = sorted(values)  # ordered choices let Bayesian optimisation interpolate
    if len(values) == 1:
        return {"value": values[0]}
    return {"values": values, "default": default}


def _range(key, spec):
    unknown = set(spec) - {"min", "max", "step", "sampling", "default"}
    if unknown or "min" not in spec or "max" not in spec:
        raise ValueError(f"search space {key!r}: a range needs 'min' and 'max' (optional "
                         f"'step', 'sampling', 'default'); received {spec!r}")
    low, high = _check_value(key, spec["min"]), _check_value(key, spec["max"])
    if low > high:
        raise ValueError(f"search space {key!r}: min {low!r} is larger than max {high!r}")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise ValueError(f"search space {key!r}: sampling {sampling!r} is not one of "
                         f"{list(SAMPLINGS)}")
    if sampling != "linear" and low <= 0:
        raise ValueError(f"search space {key!r}: {sampling} sampling needs min > 0; "
                         f"received min={low!r}")
    step = spec.get("step")
    if step is not None and not (_is_number(step) and step > 0):
        raise ValueError(f"search space {key!r}: step {step!r} is not a positive number")
    if key in _LIST_ONLY_KEYS:
        if step is None or sampling != "linear":
            raise ValueError(f"search space {key!r}: give a list of values, or a range with a "
                             f"linear 'step'; received {spec!r}")
        return _choice(key, list(range(low, high + 1, int(step))), spec.get("default"))
    default = _check_value(key, spec.get("default", low))
    if not low <= default <= high:
        raise ValueError(f"search space {key!r}: default {default!r} is outside "
                         f"[{low!r}, {high!r}]")
    if key in _INT_KEYS and step is not None:
        step = int(step)
    if key not in _INT_KEYS:
        low, high, default = float(low), float(high), float(default)
    return {"min": low, "max": high, "step": step, "sampling": sampling, "default": default}


def _parse_spec(key, spec):
    """One user spec -> `{"value"}`, `{"values", "default"}` or a range dict."""
    if isinstance(spec, dict):
        if "values" in spec:
            extra = set(spec) - {"values", "default"}
            if extra:
                raise ValueError(f"search space {key!r}: unexpected {sorted(extra)} next to "
                                 "'values'")
            return _choice(key, spec["values"], spec.get("default"))
        return _range(key, spec)
    if isinstance(spec, (list, tuple)):
        return _choice(key, list(spec))
    if spec is None:
        raise ValueError(f"search space {key!r}: None is only allowed for keys with a default")
    return {"value": _check_value(key, spec)}


def _values_of(param):
    return param["values"] if "values" in param else [param["value"]]


def resolve_search_space(image_shape, search_space=None):
    """Validates `search_space` overrides and merges them into the default space.

    Runs in `ViTHyperModel.__init__`, so a bad space fails before any trial.

    Args:
        image_shape: (height, width, channels) of the images.
        search_space: dict of overrides (see the module docstring) or None.

    Returns:
        dict key -> normalised spec (`{"value": v}`, `{"values": [...],
        "default": v}` or `{"min", "max", "step", "sampling", "default"}`), JSON
        serialisable, with `patch_size`, `hidden_dim` and `num_heads` always lists.

    Raises:
        ValueError: an unknown key, an empty choice, a value of the wrong type or
            range, a patch size that does not divide the image, a head count that
            divides none of the widths; the message names the value.

    Example:
    >>> resolve_search_space((8, 8, 1), {"depth": [2, 4]})["depth"]
    {'values': [2, 4], 'default': 2}
    """
    search_space = dict(search_space or {})
    known = list(DEFAULT_SEARCH_SPACE) + list(OPTIONAL_SEARCH_KEYS)
    for key in search_space:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown search space key {key!r}{hint}; expected one of {known}")
    height, width = int(image_shape[0]), int(image_shape[1])
    space = {}
    for key in known:
        spec = search_space.get(key)
        if spec is None and key in OPTIONAL_SEARCH_KEYS:
            continue  # not searched: the model keeps its fixed default
        if spec is None and key == "patch_size":
            spec = default_patch_sizes(image_shape)
        elif spec is None:
            spec = DEFAULT_SEARCH_SPACE[key]
        space[key] = _parse_spec(key, spec)

    for patch in _values_of(space["patch_size"]):
        if height % patch or width % patch:
            raise ValueError(f"search space 'patch_size': {patch} does not divide the image "
                             f"size {height}x{width}; divisors of both sides: "
                             f"{default_patch_sizes(image_shape, (1, height * width))}")
    widths = _values_of(space["hidden_dim"])
    for heads in _values_of(space["num_heads"]):
        if all(w % heads for w in widths):
            raise ValueError(f"search space 'num_heads': {heads} heads divide none of the "
                             f"widths hidden_dim={widths}")
    return space


def width_head_pairs(space):
    """Valid `"WIDTHxHEADS"` strings of a resolved space, width then heads ascending.

    Example:
    >>> width_head_pairs(resolve_search_space((8, 8, 1), {"hidden_dim": [32], "num_heads": [2, 4]}))
    ['32x2', '32x4']
    """
    return [f"{w}x{h}" for w in sorted(_values_of(space["hidden_dim"]))
            for h in sorted(_values_of(space["num_heads"])) if w % h == 0]


def split_width_heads(value):
    """`"64x4"` -> `(64, 4)`."""
    width, heads = str(value).split("x")
    return int(width), int(heads)


def _register(hp, name, param):
    """Declares one hyperparameter on `hp` and returns its current value."""
    if "value" in param:
        return hp.Fixed(name, param["value"])
    if "values" in param:
        return hp.Choice(name, param["values"], default=param["default"])
    kind = hp.Int if isinstance(param["min"], int) else hp.Float
    return kind(name, param["min"], param["max"], step=param["step"],
                sampling=param["sampling"], default=param["default"])


# ------------------------------------------------------------------- the hypermodel


class ViTHyperModel(keras_tuner.HyperModel):
    """A keras-tuner `HyperModel` of Vision Transformers.

    `build(hp)` returns a compiled `vision_transformer` (AdamW with linear
    warm-up and cosine decay, label-smoothed cross-entropy, `accuracy` metric);
    `fit(hp, model, x, ...)` trains it with the trial's batch size and passes
    Hyperband's `epochs`/`initial_epoch` through.

    Data: `tf.data` datasets of UNBATCHED `(image, label)` examples are batched
    with the trial's batch size; batched datasets are re-batched
    (`.unbatch().batch(batch_size)`); numpy arrays get `batch_size=`. Other
    inputs (generators, `PyDataset`) are passed through as they are, so the
    `batch_size` hyperparameter has no effect on them. Images are raw pixels in
    [0, 255]; labels are int class indices or one-hot vectors.

    Args:
        image_shape: (height, width, channels) of the images.
        num_classes: int. Classes of the head.
        search_space: dict of overrides of `DEFAULT_SEARCH_SPACE` (keys
            `patch_size, depth, hidden_dim, num_heads, mlp_ratio, pooling,
            dropout, drop_path, learning_rate, weight_decay, label_smoothing,
            batch_size`, and on request `position_embedding, attention_dropout`);
            see the module docstring for the value forms. Validated here.
        epochs: int or None. Length of the learning-rate schedule in epochs
            (Hyperband: its `max_epochs`). With `num_train_examples`, the rate
            warms up linearly then decays with a cosine; without either it is
            constant.
        num_train_examples: int or None. Training examples per epoch, for the
            schedule's steps per epoch at each batch size.
        warmup_fraction: float in [0, 1). Share of the schedule spent warming up.
        clipnorm: float. Gradient clipping norm.
        jit_compile: bool or "auto". XLA-compile the train and predict steps.
        dtype_policy: str or None. Dtype policy of the models, e.g.
            `"mixed_bfloat16"`; None takes the global policy at construction.
            Kept explicitly because keras-tuner clears the Keras session (and
            with it the global policy) before every trial.
        model_kwargs: dict. Fixed extra `vision_transformer` arguments (e.g.
            `mean`, `std`, `representation_size`).
        name: str. HyperModel name.

    Example:
    >>> hypermodel = ViTHyperModel((32, 32, 3), 10, {"patch_size": [4], "depth": [4, 6]},
    ...                            epochs=20, num_train_examples=50_000)
    >>> tuner = keras_tuner.Hyperband(hypermodel, objective="val_accuracy", max_epochs=20)
    >>> tuner.search(train.unbatch(), validation_data=validation, epochs=20)
    >>> model = hypermodel.build(tuner.get_best_hyperparameters()[0])
    """

    def __init__(self, image_shape, num_classes, search_space=None, *, epochs=None,
                 num_train_examples=None, warmup_fraction=0.1, clipnorm=1.0, jit_compile=True,
                 dtype_policy=None, model_kwargs=None, name="vit_hypermodel"):
        super().__init__(name=name)
        self.image_shape = tuple(int(v) for v in image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) <= 0:
            raise ValueError(f"image_shape must be (height, width, channels); "
                             f"received {image_shape!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer; received {num_classes!r}")
        self.num_classes = num_classes
        self.space = resolve_search_space(self.image_shape, search_space)
        self.pairs = width_head_pairs(self.space)
        for label, value in (("epochs", epochs), ("num_train_examples", num_train_examples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise ValueError(f"{label} must be a positive integer or None; received {value!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1); received {warmup_fraction!r}")
        self.epochs = epochs
        self.num_train_examples = num_train_examples
        self.warmup_fraction = float(warmup_fraction)
        self.clipnorm = clipnorm
        self.jit_compile = jit_compile
        self.dtype_policy = dtype_policy or keras.config.dtype_policy().name
        self.model_kwargs = dict(model_kwargs or {})
        clash = set(self.model_kwargs) & (set(self.space) | set(OPTIONAL_SEARCH_KEYS)
                                          | {"image_shape", "num_classes", "mlp_dim"})
        if clash:
            raise ValueError(f"model_kwargs {sorted(clash)} are set by the search space")

    # -- hyperparameters

    def declare(self, hp):
        """Declares the search space on `hp` and returns this trial's raw values.

        Args:
            hp: `keras_tuner.HyperParameters` (fresh ones get the defaults).

        Returns:
            dict hyperparameter name -> value, with `width_heads` as `"64x4"`.
        """
        values = {}
        for key in _ORDER:
            if key == WIDTH_HEADS:
                pairs = self.pairs
                param = {"value": pairs[0]} if len(pairs) == 1 else {
                    "values": pairs, "default": self._default_pair()}
            elif key in self.space:
                param = self.space[key]
            else:
                continue
            values[key] = _register(hp, key, param)
        return values

    def _default_pair(self):
        width = self.space["hidden_dim"].get("default", self.space["hidden_dim"].get("value"))
        heads = self.space["num_heads"].get("default", self.space["num_heads"].get("value"))
        wanted = f"{width}x{heads}"
        if wanted in self.pairs:
            return wanted
        # The default width with the most heads that divide it, else the first pair.
        same_width = [p for p in self.pairs if split_width_heads(p)[0] == width]
        return (same_width or self.pairs)[-1 if same_width else 0]

    def settings(self, hp):
        """Every setting of a trial, readable: widths, heads and MLP width decoded.

        Args:
            hp: `keras_tuner.HyperParameters`, or a dict of its `.values`.

        Returns:
            dict with `patch_size, depth, hidden_dim, num_heads, mlp_ratio,
            mlp_dim, pooling, position_embedding, dropout, attention_dropout,
            drop_path, learning_rate, weight_decay, label_smoothing, batch_size`.

        Example:
        >>> hypermodel.settings(tuner.get_best_hyperparameters()[0])["hidden_dim"]
        64
        """
        values = dict(hp) if isinstance(hp, dict) else self.declare(hp)
        settings = {}
        for key in _ORDER:
            if key == WIDTH_HEADS:
                pair = values.get(WIDTH_HEADS, self._default_pair())
                settings["hidden_dim"], settings["num_heads"] = split_width_heads(pair)
                continue
            if key in values:
                settings[key] = values[key]
            elif key in OPTIONAL_SEARCH_KEYS:
                settings[key] = OPTIONAL_SEARCH_KEYS[key]
            else:
                param = self.space[key]
                settings[key] = param.get("value", param.get("default"))
        settings["mlp_dim"] = max(1, int(round(settings["hidden_dim"] * settings["mlp_ratio"])))
        return settings

    def model_kwargs_for(self, hp):
        """`vision_transformer` keyword arguments of a trial.

        Example:
        >>> vision_transformer(**hypermodel.model_kwargs_for(best_hp))
        """
        s = self.settings(hp)
        kwargs = dict(variant="Ti", image_shape=self.image_shape, num_classes=self.num_classes,
                      patch_size=s["patch_size"], hidden_dim=s["hidden_dim"], depth=s["depth"],
                      num_heads=s["num_heads"], mlp_dim=s["mlp_dim"], pooling=s["pooling"],
                      position_embedding=s["position_embedding"], dropout=s["dropout"],
                      attention_dropout=s["attention_dropout"], drop_path=s["drop_path"],
                      name=(f"vit_p{s['patch_size']}_d{s['depth']}_w{s['hidden_dim']}"
                            f"_h{s['num_heads']}"))
        kwargs.update(self.model_kwargs)
        return kwargs

    # -- keras-tuner API

    def build(self, hp):
        """Builds and compiles the trial's model under `self.dtype_policy`.

        Args:
            hp: `keras_tuner.HyperParameters`.

        Returns:
            A compiled functional `keras.Model` mapping [0, 255] images to logits.
        """
        settings = self.settings(hp)
        model = self._build_model(self.model_kwargs_for(hp))
        self._compile(model, settings)
        return model

    def _build_model(self, kwargs):
        # The policy a layer gets is fixed when it is created, so setting the
        # global policy around construction only is enough; restoring it keeps
        # the caller's global state as it was.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.dtype_policy)
        try:
            return vision_transformer(**kwargs)
        finally:
            keras.config.set_dtype_policy(previous)

    def steps_per_epoch(self, batch_size):
        """Optimizer steps per epoch at `batch_size`, or None without `num_train_examples`."""
        if not self.num_train_examples:
            return None
        return math.ceil(self.num_train_examples / batch_size)

    def learning_rate(self, peak, batch_size):
        """Warm-up + cosine decay schedule over `epochs`, or the constant `peak`.

        Same schedule as the training job (`pipelines.train.warmup_cosine_schedule`).
        """
        steps = self.steps_per_epoch(batch_size)
        if not (steps and self.epochs):
            return peak
        total = steps * self.epochs
        warmup = int(self.warmup_fraction * total)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, decay_steps=max(total - warmup, 1),
            warmup_target=peak, warmup_steps=warmup)

    def _compile(self, model, settings):
        optimizer = keras.optimizers.AdamW(
            self.learning_rate(settings["learning_rate"], settings["batch_size"]),
            weight_decay=settings["weight_decay"], clipnorm=self.clipnorm)
        model.compile(optimizer,
                      SmoothedCrossentropy(self.num_classes, settings["label_smoothing"]),
                      metrics=[LabelAccuracy(self.num_classes)], jit_compile=self.jit_compile)
        # Create the optimizer's slots now: checkpoints then restore them whole
        # (`get_best_models`, Hyperband continuing a trial) instead of skipping them.
        model.optimizer.build(model.trainable_variables)

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model` with the trial's batch size; returns the `History`.

        Arguments are those of `model.fit`, as given to `tuner.search`; Hyperband's
        `epochs` and `initial_epoch` pass through. With `initial_epoch > 0` (a
        Hyperband continuation) the optimizer's step counter is moved to where the
        schedule would be, so the learning rate does not warm up again.

        Args:
            hp: `keras_tuner.HyperParameters` of the trial.
            model: the model `build(hp)` returned.
            *args, **kwargs: `model.fit` arguments (`x`, `validation_data`, ...).

        Returns:
            The `keras.callbacks.History` of `model.fit`.
        """
        batch_size = self.settings(hp)["batch_size"]
        args = list(args)
        x = args.pop(0) if args else kwargs.pop("x", None)
        kwargs.pop("batch_size", None)  # the hyperparameter decides
        input_rank = len(model.input_shape)
        if hasattr(x, "element_spec"):
            x = _batched(x, batch_size, input_rank, rebatch=True)
            # A dataset shuffles itself; Keras only warns about `shuffle=True` for it.
            kwargs.setdefault("shuffle", False)
        elif x is not None and hasattr(x, "shape"):
            kwargs["batch_size"] = batch_size
        validation = kwargs.get("validation_data")
        if hasattr(validation, "element_spec"):
            # Batched validation data is left alone: its batch size changes no score.
            kwargs["validation_data"] = _batched(validation, batch_size, input_rank,
                                                 rebatch=False)
        initial_epoch = kwargs.get("initial_epoch") or 0
        steps = self.steps_per_epoch(batch_size)
        if initial_epoch and steps:
            optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
            optimizer.iterations.assign(initial_epoch * steps)
        return model.fit(x, *args, **kwargs)


def _batched(dataset, batch_size, input_rank, rebatch):
    """Batches a `tf.data`-like dataset of `(image, label)` without importing tf.

    The image rank tells batched (`input_rank`) from unbatched examples
    (`input_rank - 1`); batched ones are re-batched only if `rebatch`.
    """
    spec = dataset.element_spec
    image_spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    rank = len(image_spec.shape)
    if rank == input_rank:
        if not rebatch:
            return dataset
        dataset = dataset.unbatch()
    elif rank != input_rank - 1:
        raise ValueError(f"expected a dataset of images of rank {input_rank - 1} (unbatched) "
                         f"or {input_rank} (batched); received element_spec {spec!r}")
    return dataset.batch(batch_size).prefetch(-1)  # -1 is tf.data.AUTOTUNE
