"""`ViTHyperModel`: Vision Transformers as a keras-tuner `HyperModel`.

Each trial's model is `keras_vit.models.vision_transformer` compiled with the
project's one training recipe (`keras_vit.recipe.TrainingRecipe`), the same
optimizer, schedule, loss and metric `keras-vit train` uses.

Example:
>>> hypermodel = ViTHyperModel((8, 8, 1), 10, {"depth": [1, 2]}, epochs=5,
...                            num_train_examples=1149)
>>> model = hypermodel.build(keras_tuner.HyperParameters())  # the defaults
"""

import keras
import keras_tuner

from keras_vit.models.vit import vision_transformer
from keras_vit.recipe import DEFAULT_CLIPNORM, DEFAULT_WARMUP_FRACTION, TrainingRecipe
from keras_vit.recipe import steps_per_epoch as _steps_per_epoch
from keras_vit.tuning.space import (
    HYPERPARAMETER_ORDER,
    OPTIONAL_SEARCH_KEYS,
    WIDTH_HEADS,
    register_hyperparameter,
    resolve_search_space,
    split_width_heads,
    width_head_pairs,
)


class ViTHyperModel(keras_tuner.HyperModel):
    """A keras-tuner `HyperModel` of Vision Transformers.

    `build(hp)` returns a `vision_transformer` compiled by the trial's
    `TrainingRecipe` (AdamW with linear warm-up and cosine decay, gradient
    clipping, label-smoothed cross-entropy, `accuracy` metric);
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
        drop_remainder: bool. Batch `tf.data` inputs dropping the last,
            smaller batch, and count the schedule's steps that way (as
            `keras-vit train` does).
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
                 num_train_examples=None, warmup_fraction=DEFAULT_WARMUP_FRACTION,
                 clipnorm=DEFAULT_CLIPNORM, drop_remainder=False, jit_compile=True,
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
        # Fails here, before any trial, on a bad warm-up fraction or clipping norm.
        TrainingRecipe(learning_rate=1.0, warmup_fraction=warmup_fraction, clipnorm=clipnorm)
        self.epochs = epochs
        self.num_train_examples = num_train_examples
        self.warmup_fraction = float(warmup_fraction)
        self.clipnorm = clipnorm
        self.drop_remainder = bool(drop_remainder)
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
        for key in HYPERPARAMETER_ORDER:
            if key == WIDTH_HEADS:
                pairs = self.pairs
                param = {"value": pairs[0]} if len(pairs) == 1 else {
                    "values": pairs, "default": self._default_pair()}
            elif key in self.space:
                param = self.space[key]
            else:
                continue
            values[key] = register_hyperparameter(hp, key, param)
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
        for key in HYPERPARAMETER_ORDER:
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
        """Builds the trial's model under `self.dtype_policy`, compiled by its recipe.

        Args:
            hp: `keras_tuner.HyperParameters`.

        Returns:
            A compiled functional `keras.Model` mapping [0, 255] images to logits.
        """
        settings = self.settings(hp)
        model = self._build_model(self.model_kwargs_for(hp))
        return self.recipe(hp).compile(model, self.total_steps(settings["batch_size"]),
                                       jit_compile=self.jit_compile)

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

    def recipe(self, hp):
        """The trial's `keras_vit.recipe.TrainingRecipe` (the one `keras-vit train` uses).

        Example:
        >>> hypermodel.recipe(best_hp).learning_rate
        """
        settings = self.settings(hp)
        return TrainingRecipe(learning_rate=settings["learning_rate"],
                              weight_decay=settings["weight_decay"],
                              warmup_fraction=self.warmup_fraction,
                              label_smoothing=settings["label_smoothing"],
                              clipnorm=self.clipnorm)

    def steps_per_epoch(self, batch_size):
        """Optimizer steps per epoch at `batch_size`, or None without `num_train_examples`."""
        if not self.num_train_examples:
            return None
        return _steps_per_epoch(self.num_train_examples, batch_size, self.drop_remainder)

    def total_steps(self, batch_size):
        """Steps of the schedule (`epochs` epochs), or None: then the rate is constant."""
        steps = self.steps_per_epoch(batch_size)
        return steps * self.epochs if steps and self.epochs else None

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
        steps = self.steps_per_epoch(batch_size)
        if hasattr(x, "element_spec"):
            x = _batched(x, batch_size, input_rank, rebatch=True,
                         drop_remainder=self.drop_remainder)
            if steps and _unknown_size(x):
                # On TensorFlow, Keras 3 counts one optimizer step more per epoch
                # than it trains on a dataset of unknown size (6 batches counted
                # 9 over 3 epochs), so the schedule ran out before the last epoch.
                # Each epoch re-creates the iterator: repeat().take() is exactly
                # one pass of `steps` batches, and sized.
                x = x.repeat().take(steps)
            # A dataset shuffles itself; Keras only warns about `shuffle=True` for it.
            kwargs.setdefault("shuffle", False)
        elif x is not None and hasattr(x, "shape"):
            kwargs["batch_size"] = batch_size
        validation = kwargs.get("validation_data")
        if hasattr(validation, "element_spec"):
            # Batched validation data is left alone: its batch size changes no score.
            kwargs["validation_data"] = _batched(validation, batch_size, input_rank,
                                                 rebatch=False, drop_remainder=False)
        initial_epoch = kwargs.get("initial_epoch") or 0
        if initial_epoch and steps:
            optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
            optimizer.iterations.assign(initial_epoch * steps)
        return model.fit(x, *args, **kwargs)


def _unknown_size(dataset):
    """Whether a `tf.data`-like dataset's cardinality is unknown (`-2`)."""
    cardinality = getattr(dataset, "cardinality", None)
    return cardinality is not None and int(cardinality()) == -2


def _batched(dataset, batch_size, input_rank, rebatch, drop_remainder):
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
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(-1)  # AUTOTUNE

