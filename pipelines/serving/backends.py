"""One interface over the three ways to run an export: REST, gRPC, a local folder.

Example:
    >>> backend = open_backend(server="http://localhost:8501", model_name="vit")
    >>> backend.image_shape()
    (32, 32, 3)
    >>> backend.predict(read_images(["cat.jpg"]))["top_k_labels"]
"""

import dataclasses

from pipelines.serving.contract import SERVING_BYTES, SERVING_DEFAULT
from pipelines.serving.grpc_client import grpc_image_shape, grpc_predict
from pipelines.serving.image_files import decode_for_float_signature
from pipelines.serving.local_client import load_saved_model, local_predict, saved_model_image_shape
from pipelines.serving.rest_client import rest_image_shape, rest_predict


@dataclasses.dataclass
class Backend:
    """Where predictions come from: exactly one of `server`, `grpc_target`, `saved_model`.

    Attributes:
        server: REST base URL, e.g. `http://localhost:8501`.
        grpc_target: gRPC `host:port`.
        saved_model: a SavedModel version folder.
        model_name: served model name (REST/gRPC).
        timeout: seconds to wait for a server's answer.
    """

    server: str = None
    grpc_target: str = None
    saved_model: str = None
    model_name: str = None
    timeout: float = 60.0
    _loaded: object = dataclasses.field(default=None, repr=False)

    def _local(self):
        if self._loaded is None:
            self._loaded = load_saved_model(self.saved_model)
        return self._loaded

    def image_shape(self):
        """The model's `(H, W, C)`, or None when a server does not say."""
        if self.server is not None:
            return rest_image_shape(self.server, self.model_name, self.timeout)
        if self.grpc_target is not None:
            return grpc_image_shape(self.grpc_target, self.model_name, self.timeout)
        return saved_model_image_shape(self.saved_model, self._local())

    def predict(self, images, signature_name=SERVING_BYTES, image_shape=None):
        """Send encoded `images` to the signature; return its outputs.

        Args:
            images: list of encoded image files (bytes).
            signature_name: `serving_bytes` (files as they are) or `serving_default`
                (decoded here to `image_shape`, default the model's).
            image_shape: `(H, W, C)` for `serving_default`.
        """
        if signature_name == SERVING_DEFAULT:
            if self.saved_model is not None or image_shape is None:
                image_shape = self.image_shape()  # a local model always knows its size
            if image_shape is None:
                raise ValueError(
                    "serving_default through a server needs the image size: the server "
                    "gave no model metadata, so pass --image-size"
                )
            images = decode_for_float_signature(images, image_shape)
        if self.server is not None:
            return rest_predict(self.server, self.model_name, images, signature_name, self.timeout)
        if self.grpc_target is not None:
            return grpc_predict(
                self.grpc_target, self.model_name, images, signature_name, self.timeout
            )
        return local_predict(self.saved_model, images, signature_name, loaded=self._local())


def open_backend(*, server=None, grpc_target=None, saved_model=None, model_name=None,
                 timeout=60.0):
    """Check the choice of back end and return a `Backend`.

    Example:
        >>> open_backend(saved_model="savedmodels/vit/1").image_shape()
        (32, 32, 3)
    """
    if sum(x is not None for x in (server, grpc_target, saved_model)) != 1:
        raise ValueError("Give exactly one of server, grpc_target or saved_model")
    if saved_model is None and not model_name:
        raise ValueError("model_name is required for a server")
    return Backend(server, grpc_target, saved_model, model_name, timeout)


def predict(
    images,
    *,
    server=None,
    grpc_target=None,
    saved_model=None,
    model_name=None,
    signature_name=SERVING_BYTES,
    image_shape=None,
    timeout=60.0,
):
    """Send encoded `images` to exactly one back end; return the signature outputs.

    Args:
        images: list of encoded image files (bytes).
        server / grpc_target / saved_model: REST URL, gRPC `host:port` or a
            SavedModel folder; exactly one.
        model_name: served model name (REST/gRPC).
        signature_name: `serving_bytes` (files as they are) or `serving_default`
            (decoded here).
        image_shape: `(H, W, C)` for `serving_default` through a server; default:
            asked from the server's model metadata.
        timeout: seconds to wait for a server's answer.

    Example:
        >>> predict(read_images(["cat.jpg"]), saved_model="savedmodels/vit/1")["top_k_labels"]
    """
    backend = open_backend(server=server, grpc_target=grpc_target, saved_model=saved_model,
                           model_name=model_name, timeout=timeout)
    return backend.predict(images, signature_name, image_shape)
