"""The search-space and objective input of `keras-vit tune`: `--space`, `--space-file`, `--objective`.

Example:
>>> load_space(None, ["depth=2,4", "learning_rate=1e-4:3e-3:log"])
{'depth': [2, 4], 'learning_rate': {'min': 0.0001, 'max': 0.003, 'sampling': 'log'}}
"""

import json
import os


def _scalar(text):
    """`"4"` -> 4, `"1e-3"` -> 0.001, `"gap"` -> "gap"."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_space_arg(text):
    """One `--space` value -> `(key, spec)` in `ViTHyperModel`'s search-space forms.

    `KEY=A,B,C` is a choice, `KEY=V` a fixed value, `KEY=LO:HI` a linear range,
    and `KEY=LO:HI:log` / `KEY=LO:HI:STEP` / `KEY=LO:HI:STEP:log` add sampling or
    a step.

    Args:
        text: str, e.g. `"depth=2,4"` or `"learning_rate=1e-4:3e-3:log"`.

    Returns:
        `(key, spec)`.

    Example:
    >>> parse_space_arg("learning_rate=1e-4:3e-3:log")
    ('learning_rate', {'min': 0.0001, 'max': 0.003, 'sampling': 'log'})
    """
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(f"--space {text!r}: expected KEY=VALUES, e.g. depth=2,4 or "
                         "learning_rate=1e-4:3e-3:log")
    if ":" in value:
        parts = value.split(":")
        if len(parts) > 4 or not all(parts):
            raise ValueError(f"--space {text!r}: a range is LO:HI[:STEP][:SAMPLING]")
        spec = {"min": _scalar(parts[0]), "max": _scalar(parts[1])}
        for extra in parts[2:]:
            extra_value = _scalar(extra)
            spec["sampling" if isinstance(extra_value, str) else "step"] = extra_value
        return key, spec
    if "," in value:
        return key, [_scalar(v) for v in value.split(",") if v.strip()]
    return key, _scalar(value)


def load_space(space_file=None, space_args=()):
    """Search-space overrides from a JSON file, then `--space` values on top.

    The file holds one JSON object in the forms of `ViTHyperModel`:
    `{"depth": [2, 4], "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
    "dropout": 0.0}`.

    Args:
        space_file: path or None.
        space_args: iterable of `--space` strings.

    Returns:
        dict key -> spec.

    Example:
    >>> load_space(None, ["depth=2,4", "pooling=gap"])
    {'depth': [2, 4], 'pooling': 'gap'}
    """
    space = {}
    if space_file:
        try:
            with open(space_file) as handle:
                space = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--space-file {space_file!r}: {error}") from error
        if not isinstance(space, dict):
            raise ValueError(f"--space-file {space_file!r}: expected a JSON object of "
                             "key -> values")
    for text in space_args or ():
        key, spec = parse_space_arg(text)
        space[key] = spec
    return space


#: What every trial logs (the recipe's loss and `LabelAccuracy`, on train and validation).
TRIAL_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def parse_objective(text):
    """`"val_accuracy"` or `"val_loss:min"` -> a `keras_tuner.Objective`.

    Without a direction, names with `loss` or `error` are minimised, others
    maximised. The name must be one the trials log (`TRIAL_METRICS`): any other
    would be found missing only after the first trial trained.
    """
    import keras_tuner as kt

    name, _, direction = str(text).partition(":")
    direction = direction or ("min" if "loss" in name or "error" in name else "max")
    if not name or direction not in ("min", "max"):
        raise ValueError(f"--objective {text!r}: expected NAME or NAME:min / NAME:max")
    if name not in TRIAL_METRICS:
        raise ValueError(f"--objective {text!r}: the trials log {', '.join(TRIAL_METRICS)}; "
                         f"received the name {name!r}")
    return kt.Objective(name, direction=direction)


SPACE_FILE = "search_space.json"


def check_space_unchanged(project_dir, record, overwrite):
    """Refuses to resume a search whose space, tuner or objective differs from `record`.

    Reads `project_dir/search_space.json` (written by the run that started the
    search); writes nothing. Call it before building the tuner.

    Args:
        project_dir: the keras-tuner project folder.
        record: this run's `{"space", "tuner", "objective", "dataset", "image_shape"}`.
        overwrite: bool. With it the search starts over: nothing to compare.

    Raises:
        ValueError: naming the folder, when the records differ.

    Example:
    >>> check_space_unchanged("runs/tune/search", record, overwrite=False)
    """
    path = os.path.join(project_dir, SPACE_FILE)
    if os.path.exists(path) and not overwrite:
        with open(path) as handle:
            previous = json.load(handle)
        if previous != record:
            raise ValueError(f"the search in {project_dir} was started with another search "
                             f"space, tuner or objective ({path}); pass --overwrite to start "
                             "over, or another --project-name")

