"""`TuneConfig`: every option of a tuning run, and its checks.

Example:
>>> config = TuneConfig(max_trials=4, epochs=3, space=["depth=2,4"]).resolved()
>>> check_config(config)
"""

import dataclasses
import os

from pipelines.cli_args import safe_name
from pipelines.options import DEFAULT_DATASET, PRECISIONS, TUNERS

DEFAULT_PROJECT = "search"
# Batch size the data is read with; trials re-batch with their own batch size.
READ_BATCH = 256


@dataclasses.dataclass
class TuneConfig:
    """Every option of a tuning run; attributes mirror the flags of `build_parser`.

    Example:
    >>> TuneConfig(dataset="mnist").resolved().output_dir
    'runs/tune_mnist'
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str = None
    offline: bool = False
    image_size: tuple = None
    on_bad_image: str = "error"
    augmentation: str = None
    deterministic: bool = False
    train_examples: int = None
    validation_examples: int = None
    tuner: str = "random"
    max_trials: int = 10
    epochs: int = 10
    hyperband_factor: int = 3
    objective: str = "val_accuracy"
    space: list = dataclasses.field(default_factory=list)
    space_file: str = None
    precision: str = "auto"
    xla: bool = True
    seed: int = 0
    output_dir: str = None
    project_name: str = DEFAULT_PROJECT
    overwrite: bool = False
    retrain_epochs: int = 0
    export: bool = True
    export_dir: str = "savedmodels"
    model_name: str = None
    verify_export: bool = True
    verbose: int = 1

    def resolved(self):
        """A copy with the dataset-dependent defaults filled in."""
        values = dataclasses.asdict(self)
        name = safe_name(self.dataset)
        values["output_dir"] = values["output_dir"] or os.path.join("runs", f"tune_{name}")
        values["model_name"] = values["model_name"] or f"vit_{name}_tuned"
        return TuneConfig(**values)


def check_config(config):
    """Fails before any data is read or trial run, naming the flag and the bad value."""
    if config.tuner not in TUNERS:
        raise ValueError(f"--tuner must be one of {TUNERS}; received {config.tuner!r}")
    for name in ("max_trials", "epochs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; "
                             f"received {value!r}")
    for name in ("train_examples", "validation_examples"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; "
                             f"received {value!r}")
    if config.retrain_epochs < 0:
        raise ValueError(f"--retrain-epochs must be >= 0; received {config.retrain_epochs!r}")
    if config.hyperband_factor < 2:
        raise ValueError(f"--hyperband-factor must be >= 2; received {config.hyperband_factor!r}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}; received {config.precision!r}")
    if config.export:
        from pipelines.serving.model_info import validate_model_name
        validate_model_name(config.model_name)

