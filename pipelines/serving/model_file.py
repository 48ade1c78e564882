"""Loading a saved Keras model file for export, with clear errors for bad files.

The file is checked with the standard library first (before TensorFlow is even
imported): Keras itself reports any unreadable `.keras` file as "File not found".

Example:
    >>> model = load_keras_model("runs/vit.keras")
"""

import pathlib
import zipfile
import zlib

#: Entries every `.keras` archive has (`keras.saving.save_model`).
KERAS_ARCHIVE_ENTRIES = ("config.json", "metadata.json")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_LEGACY_SUFFIXES = (".h5", ".hdf5")


def _not_a_model(path, why):
    from pipelines.serving.errors import ModelFileError

    return ModelFileError(f"--model {path} is corrupt or not a Keras model file: {why}")


def check_model_file(path):
    """Raise ModelFileError unless `path` looks like a readable Keras model file.

    `.keras` files must be complete zip archives with Keras' config entries;
    `.h5`/`.hdf5` files must start with the HDF5 signature.

    Args:
        path: the `--model` value.

    Returns:
        The path as a `pathlib.Path`.

    Example:
        >>> check_model_file("random.keras")
        Traceback (most recent call last):
        ModelFileError: --model random.keras is corrupt or not a Keras model file: ...
    """
    from pipelines.serving.errors import ModelFileError

    path = pathlib.Path(path)
    if not path.exists():
        raise ModelFileError(f"--model {path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"--model {path} is not a file: expected a saved .keras model")
    if path.suffix.lower() in _LEGACY_SUFFIXES:
        with open(path, "rb") as file:
            if file.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                raise _not_a_model(path, "not an HDF5 file")
        return path
    if not zipfile.is_zipfile(path):
        raise _not_a_model(path, "not a complete .keras zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise _not_a_model(path, str(error)) from None
    missing = [name for name in KERAS_ARCHIVE_ENTRIES if name not in names]
    if missing:
        raise _not_a_model(path, f"the zip archive has no {', '.join(missing)}")
    return path


def load_keras_model(path):
    """Load a `.keras` file, registering keras_vit's custom layers first.

    Args:
        path: a `.keras` (or legacy `.h5`) file.

    Raises:
        ModelFileError: the file is missing, corrupt or not a Keras model file.

    Example:
        >>> load_keras_model("runs/vit.keras").input_shape
        (None, 32, 32, 3)
    """
    import importlib

    import keras

    path = check_model_file(path)
    for module in ("keras_vit.layers", "keras_vit.models"):
        try:  # importing registers the serializable custom objects
            importlib.import_module(module)
        except ImportError:
            pass
    try:
        return keras.saving.load_model(path, compile=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as error:
        # A damaged member (bad CRC, truncated deflate stream) inside a valid archive.
        raise _not_a_model(path, _first_line(error)) from None
    except (ValueError, TypeError, KeyError, OSError) as error:
        # E.g. a custom layer that is not registered: Keras' message spans many lines.
        from pipelines.serving.errors import ModelFileError

        raise ModelFileError(f"cannot load --model {path}: {_first_line(error)}") from None


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
