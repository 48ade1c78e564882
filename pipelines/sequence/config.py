"""`SequenceConfig`: every option of an image-to-sequence run, its preset and its checks.

Example:
>>> config = SequenceConfig(epochs=1, export=False).resolved()
>>> check_sequence_config(config)
>>> config.max_length
8
"""

import dataclasses
import os

from keras_vit.recipe import (
    DEFAULT_CLIPNORM,
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_WARMUP_FRACTION,
    DEFAULT_WEIGHT_DECAY,
)
from pipelines.cli_args import safe_name
from pipelines.data.options import SEQUENCE_AUGMENTATIONS
from pipelines.options import PRECISIONS
from pipelines.sequence.data import (
    DEFAULT_SEQUENCE_DATASET,
    check_image_size_source,
    check_train_strings,
    composes_fresh_strings,
    is_folder_source,
)
from pipelines.training.config import FIT_ON, as_flag, check_positive_integers, check_recipe

#: The sequence preset: a small ViT and a 2-block decoder; any flag given on the
#: command line wins. Without --patch-size the patches are full-height strips
#: `STRIP_WIDTH` pixels wide (`strip_patch`): one token per column, read left to
#: right. On digit_strings that is 16 tokens instead of 64 for 4x4 patches: a
#: third of the step time, and the decoder's cross-attention only has to align
#: in one dimension (4x4 patches had not started reading digits after 4 epochs).
#: float32 (bf16 is slower without AMX), XLA at batch 128 (1.9x the images/s
#: of half the batch as a graph; at batch 64 XLA only gained 1.2x). On
#: digit_strings, new training strings every epoch (`train_strings` "fresh",
#: resolved per dataset) with `affine` augmentation of each digit; the final fit
#: on train+validation and decoding from 25 shifted views (`tta_shift` 2, as
#: the folder preset).
#: Chosen by the runs recorded in README.md ("The preset, measured";
#: digit_strings, 2-core CPU), where its accuracy and time are.
SEQUENCE_PRESET = {"variant": "Ti", "hidden_dim": 64, "depth": 4, "num_heads": 4,
                   "mlp_dim": 128, "position_embedding": "learned", "decoder_layers": 2,
                   "max_length": 8, "epochs": 40, "batch_size": 128, "learning_rate": 3e-3,
                   "precision": "float32", "xla": True, "augmentation": "affine",
                   "tta_shift": 2, "fit_on": "train+validation"}

# Options that decide the model, its data and its training: a killed run resumes
# only with the same values.
RUN_DEFINING_OPTIONS = (
    "task", "dataset", "image_size", "max_length", "variant", "patch_size", "hidden_dim",
    "depth", "num_heads", "mlp_dim", "position_embedding", "decoder_layers", "dropout",
    "augmentation", "train_strings", "fit_on", "epochs",
    "batch_size",
    "learning_rate", "weight_decay", "warmup_fraction", "label_smoothing", "clipnorm",
    "precision", "seed")


@dataclasses.dataclass
class SequenceConfig:
    """Every option of a sequence run; `None` means "the preset's value".

    Attributes mirror the flags of `keras-vit train --task sequence`
    (`pipelines.sequence.cli.build_parser`).

    Example:
    >>> SequenceConfig(dataset="digit_strings/small").resolved().output_dir
    'runs/sequence_digit_strings_small'
    """

    task: str = "sequence"
    dataset: str = DEFAULT_SEQUENCE_DATASET
    data_dir: str = None
    offline: bool = False
    image_size: tuple = None
    max_length: int = None
    variant: str = None
    patch_size: int = None
    hidden_dim: int = None
    depth: int = None
    num_heads: int = None
    mlp_dim: int = None
    position_embedding: str = None
    decoder_layers: int = None
    dropout: float = 0.0
    augmentation: str = None
    train_strings: str = None
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    clipnorm: float = DEFAULT_CLIPNORM
    beam_width: int = 4
    length_penalty: float = 0.6
    tta_shift: int = None
    fit_on: str = None
    precision: str = None
    xla: bool = None
    seed: int = 0
    output_dir: str = None
    overwrite: bool = False
    restart: bool = False
    model_name: str = None
    export_dir: str = "savedmodels"
    export: bool = True
    verify_export: bool = True
    verbose: int = 1
    debug: bool = False

    def resolved(self):
        """A copy with the preset filled in for every unset field, and default folders."""
        values = dataclasses.asdict(self)
        for key, value in SEQUENCE_PRESET.items():
            if values.get(key) is None:
                values[key] = value
        name = f"sequence_{dataset_slug(self.dataset)}"
        values["output_dir"] = values["output_dir"] or os.path.join("runs", name)
        values["model_name"] = values["model_name"] or name
        if values["train_strings"] is None:
            values["train_strings"] = ("fresh" if composes_fresh_strings(self.dataset)
                                       else "fixed")
        if values["image_size"] is not None:
            values["image_size"] = tuple(values["image_size"])
        return SequenceConfig(**values)


def dataset_slug(dataset):
    """`--dataset` as a folder/model-name fragment: `digit_strings/small` -> `digit_strings_small`.

    Folders give their last component (`folder:/data/plates` -> `plates`).
    """
    if is_folder_source(dataset):
        return safe_name(dataset)
    return safe_name(dataset.replace("/", "_").replace(":", "_"))


STRIP_WIDTH = 4


def strip_patch(image_shape):
    """`(height, STRIP_WIDTH)`: the default patch, a full-height strip of the image."""
    return (int(image_shape[0]), STRIP_WIDTH)


def model_kwargs(config, info):
    """`keras_vit.models.image_to_sequence` arguments of a resolved config and data info."""
    from keras_vit.models.vit import parse_variant

    patch = config.patch_size
    if patch is None and parse_variant(config.variant)[1] is None:
        patch = strip_patch(info.image_shape)
    return {"variant": config.variant, "image_shape": tuple(info.image_shape),
            "vocab_size": info.vocab.size, "max_length": config.max_length,
            "decoder_layers": config.decoder_layers, "dropout": config.dropout,
            "patch_size": patch,
            "hidden_dim": config.hidden_dim,
            "depth": config.depth, "num_heads": config.num_heads, "mlp_dim": config.mlp_dim,
            "position_embedding": config.position_embedding}


def check_decoding_flags(config):
    """The export's own decoding checks (`check_decoding_options`), naming the flags."""
    from pipelines.serving.sequence import check_decoding_options

    try:
        check_decoding_options(config.beam_width, config.length_penalty, config.tta_shift)
    except ValueError as error:
        message = str(error)
        for name in ("tta_shift", "beam_width", "length_penalty"):
            message = message.replace(name, as_flag(name))
        raise ValueError(message) from None


def check_sequence_config(config):
    """Fails before any data is read, naming the flag and the value.

    The checks shared with the classifier (`check_positive_integers`,
    `check_recipe`) are the training job's own.

    Raises:
        ValueError: one line per problem found first.
    """
    from keras_vit.models.vit import parse_variant

    parse_variant(config.variant)
    if config.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}; received {config.precision!r}")
    check_positive_integers(config, ("epochs", "batch_size", "max_length", "decoder_layers",
                                     "beam_width"))
    if config.max_length < 2:
        raise ValueError(f"--max-length must be >= 2 (one character and the end token); "
                         f"received {config.max_length}")
    dropout = config.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be a number in [0, 1); received {dropout!r}")
    check_image_size_source(config.dataset, config.image_size)
    check_train_strings(config.train_strings, config.dataset, config.max_length)
    if config.augmentation not in SEQUENCE_AUGMENTATIONS:
        raise ValueError(f"--augmentation must be one of {SEQUENCE_AUGMENTATIONS} (text is never "
                         f"flipped); received {config.augmentation!r}")
    if config.fit_on not in FIT_ON:
        raise ValueError(f"--fit-on must be one of {FIT_ON}; received {config.fit_on!r}")
    check_decoding_flags(config)
    check_recipe(config)
