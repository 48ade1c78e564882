"""Test-time augmentation by shifted views: make the views, average their predictions."""

import keras
from keras import ops

from keras_vit.layers.validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_vit")
class ShiftedViews(keras.layers.Layer):
    """Every shift of each image by up to `max_shift` pixels, stacked into the batch.

    Images are zero-padded by `max_shift` and cropped back at each offset
    `(dy, dx)` in `[-max_shift, max_shift]^2`, row-major from `(-s, -s)`:
    `(B, H, W, C) -> (B * V, H, W, C)` with `V = (2 * max_shift + 1)^2` and
    the views of one image adjacent. A view shifted by `(dy, dx)` holds pixel
    `(i + dy, j + dx)` of the original at `(i, j)`.

    Args:
        max_shift: int > 0. Largest shift in pixels.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> ShiftedViews(1)(np.zeros((2, 8, 8, 1), "float32")).shape  # (18, 8, 8, 1)
    """

    def __init__(self, max_shift=1, **kwargs):
        super().__init__(**kwargs)
        self.max_shift = check_positive_int("max_shift", max_shift)

    @property
    def num_views(self):
        return (2 * self.max_shift + 1) ** 2

    def call(self, images):
        s = self.max_shift
        height, width = images.shape[1], images.shape[2]
        padded = ops.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])
        views = [padded[:, s + dy:s + dy + height, s + dx:s + dx + width, :]
                 for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
        stacked = ops.stack(views, axis=1)  # (B, V, H, W, C)
        return ops.reshape(stacked, (-1,) + tuple(images.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.num_views
        return (batch,) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update({"max_shift": self.max_shift})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class ViewAverage(keras.layers.Layer):
    """Averages class probabilities over `num_views` adjacent views; returns log-probabilities.

    `(B * V, K)` logits -> `(B, K)` `log(mean_v softmax(logits_v))`, computed
    in float32. Log-probabilities are valid logits: their softmax is the
    averaged distribution.

    Args:
        num_views: int > 0. Views per image, adjacent in the batch.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> ViewAverage(9)(np.zeros((18, 10), "float32")).shape  # (2, 10)
    """

    def __init__(self, num_views, **kwargs):
        super().__init__(**kwargs)
        self.num_views = check_positive_int("num_views", num_views)

    def call(self, logits):
        logits = ops.cast(logits, "float32")
        views = ops.reshape(logits, (-1, self.num_views, logits.shape[-1]))
        probabilities = ops.mean(ops.softmax(views, axis=-1), axis=1)
        return ops.log(ops.maximum(probabilities, 1e-30))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.num_views
        return (batch, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"num_views": self.num_views})
        return config
