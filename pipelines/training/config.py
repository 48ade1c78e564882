"""`TrainConfig`: every option of a training run, the dataset presets and their checks.

Example:
>>> config = TrainConfig(epochs=1, export=False).resolved()
>>> check_config(config)
>>> recipe_of(config).learning_rate
0.003
"""

import dataclasses
import os

from keras_vit.recipe import (
    DEFAULT_CLIPNORM,
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_WARMUP_FRACTION,
    DEFAULT_WEIGHT_DECAY,
    TrainingRecipe,
)
from pipelines.cli_args import safe_name
from pipelines.options import (
    BAD_IMAGE_POLICIES,
    DEFAULT_DATASET,
    PRECISIONS,
    STRATEGIES,
)
from pipelines.training.init_checkpoint import (
    ARCHITECTURE_OPTIONS,
    check_init_options,
    checkpoint_kwargs,
)
from pipelines.training.presets import PRESETS, scaled_preset

# Model and schedule defaults: a named preset per dataset (`PRESETS`), else one
# scaled to the data's image size and number of training images
# (`pipelines.training.presets.scaled_preset`); any flag given on the command line wins.
# Before the data is known (early checks; the custom-loop distributed job) other
# data gets the scaled preset of `PLACEHOLDER_DATA` with 4x4 patches, which divide
# the common sizes (28, 32, 64, 96, 224).
#: What the final model is fitted on (`--fit-on`): the training split, with the
#: validation split scored after each epoch and the best epoch kept; or both
#: splits, with no validation and the last epoch kept.
FIT_ON = ("train", "train+validation")
PLACEHOLDER_DATA = dict(image_shape=(32, 32, 3), num_train=50_000, num_validation=10_000)
GENERIC_PRESET = dict(scaled_preset(**PLACEHOLDER_DATA), variant="Ti/4")

# The options that decide the model, its data and its training: a run folder
# resumes only with the same values (`pipelines.training.run_folder`).
RUN_DEFINING_OPTIONS = (
    "dataset", "image_size", "init", "freeze_backbone", "variant", "patch_size", "hidden_dim",
    "depth", "num_heads", "mlp_dim", "pooling", "position_embedding", "dropout",
    "attention_dropout", "drop_path", "epochs", "batch_size", "learning_rate", "weight_decay",
    "warmup_fraction", "label_smoothing", "clipnorm", "augmentation", "fit_on", "precision",
    "seed")


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; `None` means "the dataset preset's value".

    Attributes mirror the command-line flags (see `pipelines.training.cli.build_parser`).

    Example:
    >>> TrainConfig(dataset="digits", epochs=5).resolved().variant
    'Ti/2'
    """

    dataset: str = DEFAULT_DATASET
    task: str = "classify"  # `--task sequence` runs pipelines.sequence.job instead
    data_dir: str = None
    offline: bool = False
    image_size: tuple = None
    on_bad_image: str = "error"
    init: str = None
    freeze_backbone: bool = False
    variant: str = None
    patch_size: int = None
    hidden_dim: int = None
    depth: int = None
    num_heads: int = None
    mlp_dim: int = None
    pooling: str = None
    position_embedding: str = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    clipnorm: float = DEFAULT_CLIPNORM
    augmentation: str = None
    tta_shift: int = None
    fit_on: str = None
    precision: str = "auto"
    xla: bool = True
    distribute: str = "none"
    tpu: str = None  # --distribute tpu: TPU name, grpc:// address or "local"
    startup_timeout: float = None  # --distribute multi_worker: seconds to wait for peers
    data_service: str = None  # grpc://HOST:PORT of a tf.data service dispatcher
    seed: int = 0
    deterministic: bool = False
    output_dir: str = None
    overwrite: bool = False
    restart: bool = False
    model_name: str = None
    export_dir: str = "savedmodels"
    export: bool = True
    verify_export: bool = True
    baseline: bool = True
    verbose: int = 1
    debug: bool = False

    @property
    def preset_needs_data(self):
        """Whether unset options take the data-scaled preset (no named preset for the dataset)."""
        return self.dataset not in PRESETS

    def resolved(self, info=None):
        """A copy with the dataset preset filled in for every unset field.

        With `init`, the architecture fields stay unset: the checkpoint defines them.

        Args:
            info: the data's `DatasetInfo`, for a dataset without a named preset:
                its preset is scaled to the images and their number
                (`scaled_preset`, following the options given). Without it,
                such a dataset gets `GENERIC_PRESET` (placeholder data).

        Example:
        >>> from pipelines.data import DatasetInfo
        >>> info = DatasetInfo("scans", (28, 28, 1), 10, list("0123456789"), 4596, 576, 1080)
        >>> TrainConfig(dataset="path/to/scans").resolved(info).variant
        'Ti/7'
        """
        if self.dataset in PRESETS:
            preset = PRESETS[self.dataset]
        elif info is None:
            preset = GENERIC_PRESET
        else:
            preset = scaled_preset(tuple(int(v) for v in info.image_shape), int(info.num_train),
                                   int(info.num_validation), given=dataclasses.asdict(self))
        preset = dict(preset, position_embedding="learned")
        if self.init:
            preset = {key: value for key, value in preset.items()
                      if key not in (*ARCHITECTURE_OPTIONS, "num_heads")}
        values = dataclasses.asdict(self)
        for key, value in dict(preset, fit_on=preset.get("fit_on", FIT_ON[0])).items():
            if values.get(key) is None:
                values[key] = value
        values["output_dir"] = values["output_dir"] or os.path.join(
            "runs", safe_name(self.dataset))
        values["model_name"] = values["model_name"] or f"vit_{safe_name(self.dataset)}"
        return TrainConfig(**values)


def recipe_of(config):
    """The `keras_vit.recipe.TrainingRecipe` of a resolved config.

    Example:
    >>> recipe_of(TrainConfig().resolved()).label_smoothing
    0.1
    """
    return TrainingRecipe(learning_rate=config.learning_rate,
                          weight_decay=config.weight_decay,
                          warmup_fraction=config.warmup_fraction,
                          label_smoothing=config.label_smoothing, clipnorm=config.clipnorm)


def model_kwargs(config, info):
    """`vision_transformer` arguments for a resolved config and dataset info.

    With `--init`: `load_checkpoint` arguments (`checkpoint_kwargs`).
    """
    if config.init:
        return checkpoint_kwargs(config, info)
    return dict(
        variant=config.variant, image_shape=info.image_shape, num_classes=info.num_classes,
        patch_size=config.patch_size, hidden_dim=config.hidden_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim, pooling=config.pooling,
        position_embedding=config.position_embedding, dropout=config.dropout,
        attention_dropout=config.attention_dropout, drop_path=config.drop_path,
    )


def as_flag(name):
    """The command-line flag of a config field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def check_positive_integers(config, names):
    """Raises ValueError naming the flag unless each field in `names` is an int > 0."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{as_flag(name)} must be a positive integer; received {value!r}")


def check_recipe(config):
    """Raises the recipe's own ValueError, with its field names written as flags."""
    try:
        recipe_of(config)
    except ValueError as error:  # the recipe names its fields; the user typed flags
        message = str(error)
        for field in dataclasses.fields(TrainingRecipe):
            message = message.replace(f"`{field.name}`", as_flag(field.name))
        raise ValueError(message) from None


def check_config(config):
    """Fails before any data is read or model trained, naming the bad value.

    Args:
        config: a resolved `TrainConfig`.

    Raises:
        ValueError: the message names the flag and the value received.
    """
    from keras_vit.models.vit import parse_variant

    check_init_options(config)
    if not config.init:
        parse_variant(config.variant)
    for name, choices in (("distribute", STRATEGIES), ("precision", PRECISIONS),
                          ("on_bad_image", BAD_IMAGE_POLICIES), ("fit_on", FIT_ON)):
        if getattr(config, name) not in choices:
            raise ValueError(f"{as_flag(name)} must be one of {choices}; "
                             f"received {getattr(config, name)!r}")
    check_positive_integers(config, ("epochs", "batch_size"))
    if not isinstance(config.tta_shift, int) or config.tta_shift < 0:
        raise ValueError(f"--tta-shift must be an integer >= 0; received {config.tta_shift!r}")
    check_recipe(config)


def check_tta_shift(tta_shift, image_shape):
    """Raises ValueError unless every shifted view keeps more than half of the image.

    `--tta-shift N` averages the views shifted by up to N pixels each way; with
    `2 N >= min(H, W)` the outermost views are mostly zero fill.

    Example:
    >>> check_tta_shift(1, (8, 8, 1))  # fine; 4 would raise
    """
    side = min(image_shape[:2])
    if tta_shift and 2 * tta_shift >= side:
        raise ValueError(f"--tta-shift {tta_shift}: views of {image_shape[0]}x{image_shape[1]} "
                         f"images shifted that far are mostly blank; expected at most "
                         f"{(side - 1) // 2}")


def hypermodel_of(config, info, **kwargs):
    """A `ViTHyperModel` whose every hyperparameter is fixed to this run's value.

    Its `build(keras_tuner.HyperParameters())` compiles the model `keras-vit
    train` trains with this config, through the same recipe; to search around
    the run, pass `search_space_of(config)` with some keys widened to a
    `ViTHyperModel` yourself.

    Args:
        config: a resolved `TrainConfig`.
        info: the dataset's `DatasetInfo`.
        **kwargs: more `ViTHyperModel` arguments (`jit_compile`, `dtype_policy`).

    Returns:
        A `keras_vit.tuning.ViTHyperModel`.

    Example:
    >>> hypermodel = hypermodel_of(config, data.info, jit_compile=False)
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    """
    from keras_vit.tuning import ViTHyperModel

    return ViTHyperModel(info.image_shape, info.num_classes, search_space_of(config),
                         epochs=config.epochs, num_train_examples=info.num_train,
                         warmup_fraction=config.warmup_fraction, clipnorm=config.clipnorm,
                         drop_remainder=True, **kwargs)


def search_space_of(config):
    """The resolved config as a `ViTHyperModel` search space of fixed values.

    Example:
    >>> search_space_of(TrainConfig().resolved())["mlp_ratio"]
    2.0
    """
    from keras_vit.models.vit import parse_variant

    if config.init:
        raise ValueError("a --init run's architecture comes from its checkpoint: it has no "
                         "ViTHyperModel search space")
    patch_size = config.patch_size or parse_variant(config.variant)[1]
    space = {key: getattr(config, key) for key in (
        "depth", "hidden_dim", "num_heads", "pooling", "position_embedding", "dropout",
        "attention_dropout", "drop_path", "learning_rate", "weight_decay", "label_smoothing",
        "batch_size")}
    space.update(patch_size=patch_size, mlp_ratio=config.mlp_dim / config.hidden_dim)
    return space
