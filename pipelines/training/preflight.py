"""Start-up checks of a training run: what must hold before any data is read.

Every check raises `ValueError` with one line naming the flag, the value and
what was expected; `keras-vit train` prints it as `keras-vit train: error: ...`
and exits with code 2.

Example:
>>> check_outputs(TrainConfig(export_dir="/proc/nope").resolved())
Traceback (most recent call last):
ValueError: --export-dir /proc/nope is not writable: ...
"""

import os
import shutil

#: Free space a run needs, roughly: best weights, two alternating backups,
#: best.keras, TensorBoard logs and one SavedModel export of the models this
#: job trains on CPUs (a ViT-B/16 run needs about 2 GB: the check is a floor,
#: meant to stop a run that would die at its first checkpoint).
MIN_FREE_BYTES = 256 * 1024**2


def nearest_existing(path):
    """`path` made absolute, or its nearest ancestor that exists."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return existing


def check_writable(path, flag):
    """Fails unless `path` is, or can be created as, a folder this process can write.

    Walks up to the nearest existing ancestor: it must be a folder (not a
    regular file) and writable. Nothing is created.

    Args:
        path: str. The folder.
        flag: str. The option that gave it, for the message.

    Raises:
        ValueError: one line naming the flag, the path and the reason.

    Example:
    >>> check_writable("runs/digits", "--output-dir")
    """
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} is not writable: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} is not writable: no permission to write in {existing}")


def check_free_space(path, flag, needed=MIN_FREE_BYTES):
    """Fails when the disk holding `path` has less than `needed` bytes free.

    Args:
        path: str. A folder that exists or will be created.
        flag: str. The option that gave it, for the message.
        needed: int. Bytes the run needs at least.

    Raises:
        ValueError: one line naming the flag, the path, the free and needed space.

    Example:
    >>> check_free_space("runs/digits", "--output-dir")
    """
    free = shutil.disk_usage(nearest_existing(path)).free
    if free < needed:
        raise ValueError(f"{flag} {path}: only {free / 1024**2:.0f} MiB free on its disk; "
                         f"expected at least {needed / 1024**2:.0f} MiB for checkpoints "
                         "and the export")


def check_outputs(config):
    """Model name, run folder and export folder of a resolved config, before any data.

    Args:
        config: a resolved `TrainConfig`.

    Raises:
        ValueError: one line naming the flag and the value.
    """
    from pipelines.serving.model_info import validate_model_name

    check_writable(config.output_dir, "--output-dir")
    check_free_space(config.output_dir, "--output-dir")
    if config.export:
        try:
            validate_model_name(config.model_name)
        except ValueError as error:
            raise ValueError(f"--model-name: {error}") from None
        check_writable(config.export_dir, "--export-dir")
        check_free_space(config.export_dir, "--export-dir")
        check_models_config(config.export_dir, "--export-dir")


def check_models_config(path, flag):
    """Fails when `path/models.config` exists but does not parse.

    The export at the end of the run rewrites that file from the one it finds: a
    broken one would fail the run after all its training.

    Args:
        path: str. The export folder.
        flag: str. The option that gave it, for the message.

    Raises:
        ValueError: one line naming the flag, the file and the parse error.

    Example:
    >>> check_models_config("savedmodels", "--export-dir")
    """
    from pipelines.serving.repository import read_models_config

    try:
        read_models_config(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{flag} {path}: {error}") from None
