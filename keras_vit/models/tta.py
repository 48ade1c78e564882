"""Test-time augmentation wrappers around a trained classifier."""

import keras

from keras_vit.layers.views import ShiftedViews, ViewAverage


def shift_averaged(model, max_shift=1, name=None):
    """Wraps a logits classifier so it predicts the average over shifted copies of the input.

    For small images whose patch grid a one-pixel shift misaligns (8x8 digits
    with 2x2 patches), a ViT's single-view prediction varies with the shift;
    averaging the class probabilities of all `(2 * max_shift + 1)^2` shifts
    removes most of that variance. The wrapper shares `model`'s weights, costs
    that many forward passes, and outputs float32 log-probabilities (logits).

    Args:
        model: a Keras classifier from images `(B, H, W, C)` to logits `(B, K)`.
        max_shift: int > 0. Largest shift in pixels.
        name: str. Defaults to `"<model.name>_shift<max_shift>"`.

    Returns:
        A functional `keras.Model` with the same input and output shapes.

    Example:
    >>> tta = shift_averaged(model, max_shift=1)   # 9 views per image
    >>> tta.predict(x_test).argmax(-1)
    """
    # float32 views: the wrapped model casts its inputs as it always does.
    views = ShiftedViews(max_shift, name="shifted_views", dtype="float32")
    images = keras.Input(model.input_shape[1:], name="images")
    logits = model(views(images))
    averaged = ViewAverage(views.num_views, name="view_average", dtype="float32")(logits)
    return keras.Model(images, averaged, name=name or f"{model.name}_shift{max_shift}")
