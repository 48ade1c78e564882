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
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.lexists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} is not writable: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} is not writable: no permission to write in {existing}")


def check_outputs(config):
    """Model name, run folder and export folder of a resolved config, before any data.

    Args:
        config: a resolved `TrainConfig`.

    Raises:
        ValueError: one line naming the flag and the value.
    """
    from pipelines.serving.model_info import validate_model_name

    check_writable(config.output_dir, "--output-dir")
    if config.export:
        try:
            validate_model_name(config.model_name)
        except ValueError as error:
            raise ValueError(f"--model-name: {error}") from None
        check_writable(config.export_dir, "--export-dir")
