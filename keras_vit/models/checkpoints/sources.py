"""Read-only, lazy views of checkpoint files: key names and shapes first, arrays on demand.

Shapes come from the files' headers, so the architecture can be read and the
requested image size checked before any weight is loaded.
"""

import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: wrong format, missing or mismatched tensors."""


def name_list(names, limit=5):
    """`'a', 'b', 'c' and 4 more`: a few names, then a count."""
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class TensorSource:
    """Named tensors of one checkpoint: `keys()`, `shape(key)`, `read(key)` (float32 numpy)."""

    description = "checkpoint"

    def keys(self):
        return set(self._shapes)

    def shape(self, key):
        return tuple(self._shapes[key])

    def read(self, key):
        raise NotImplementedError

    def close(self):
        """Releases the open file, if any."""


class NpzSource(TensorSource):
    """A `.npz` archive (Google's ViT / AugReg / big_vision checkpoints)."""

    def __init__(self, path):
        self.path = str(path)
        self.description = f"npz file {self.path!r}"
        try:
            self._shapes = _npz_header_shapes(self.path)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise CheckpointError(f"{self.path!r} is not a readable .npz checkpoint (truncated "
                                  f"or not an npz archive): {error}") from error
        self._archive = None

    def read(self, key):
        try:
            if self._archive is None:
                self._archive = np.load(self.path, allow_pickle=False)
            return np.asarray(self._archive[key], dtype="float32")
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise CheckpointError(f"cannot read tensor {key!r} from {self.path!r} (truncated "
                                  f"file?): {error}") from error

    def close(self):
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def _npz_header_shapes(path):
    """`{name: shape}` of every array in an npz, from the `.npy` headers only."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shapes[member[:-len(".npy")]] = read_header(handle)[0]
    return shapes


class SafetensorsSource(TensorSource):
    """A `.safetensors` file, read with the `safetensors` numpy API (no PyTorch)."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = str(path)
        self.description = f"safetensors file {self.path!r}"
        self._errors = (SafetensorError, OSError, ValueError, TypeError)
        try:
            self._file = safe_open(self.path, framework="numpy")
            self._shapes = {k: tuple(self._file.get_slice(k).get_shape())
                            for k in self._file.keys()}
        except self._errors as error:
            raise CheckpointError(f"{self.path!r} is not a readable .safetensors checkpoint "
                                  f"(truncated or another format): {error}") from error

    def read(self, key):
        try:
            return np.asarray(self._file.get_tensor(key), dtype="float32")
        except self._errors as error:
            raise CheckpointError(f"cannot read tensor {key!r} from {self.path!r}: "
                                  f"{error}") from error

    def close(self):
        self._file = None  # safetensors memory-maps the file; dropping the handle unmaps it


class VariableSource(TensorSource):
    """The variables of a built Keras model, keyed by their paths (keras-hub objects)."""

    def __init__(self, model):
        self.description = f"Keras model {model.name!r}"
        self._variables = {v.path: v for v in model.weights}
        self._shapes = {k: tuple(v.shape) for k, v in self._variables.items()}

    def read(self, key):
        from keras import ops

        return np.asarray(ops.convert_to_numpy(self._variables[key]), dtype="float32")
