"""Exceptions of the serving side: exports that fail and requests that fail."""


class ExportError(RuntimeError):
    """An export could not be written or did not pass its checks."""


class DisallowedOpsError(ExportError):
    """The SavedModel uses ops that a stock `tensorflow_model_server` does not have."""


class ExportVerificationError(ExportError):
    """The exported SavedModel does not reproduce the Keras model."""


class ModelFileError(ValueError):
    """A `.keras` model file is missing, corrupt or not a Keras model file."""


class PredictError(RuntimeError):
    """The server (or the local model) rejected or did not answer a request."""


def no_answer(endpoint, timeout):
    """The PredictError for a server that accepted the request but did not answer in time.

    Example:
        >>> str(no_answer("http://localhost:8501/v1/models/vit:predict", 5))
        'no answer from http://localhost:8501/v1/models/vit:predict within --timeout 5 s ...'
    """
    return PredictError(
        f"no answer from {endpoint} within --timeout {timeout:g} s: is the model server "
        "up and the model loaded? Raise --timeout for a slow server."
    )
