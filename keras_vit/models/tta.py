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


def shift_averaged_decode(decode, model, images, max_shift, **options):
    """`decode` (`greedy_decode` or `beam_search`) averaging over shifted views of `images`.

    The sequence-model counterpart of `shift_averaged`: every shift of up to
    `max_shift` pixels (`ShiftedViews`, `(2 * max_shift + 1)^2` views) is
    decoded, and each step picks the token from the views' mean probability
    (`num_views` of the decoding functions). With `max_shift=0`, `decode` as is.

    Args:
        decode: `keras_vit.models.greedy_decode` or `beam_search`.
        model: an `image_to_sequence` model.
        images: `(B, H, W, C)` images.
        max_shift: int >= 0. Largest shift in pixels; 0: one view.
        **options: `decode`'s keyword arguments (`start_id`, `end_id`, ...).

    Returns:
        `decode`'s `(tokens (B, max_length), scores (B,))`.

    Example:
    >>> tokens, scores = shift_averaged_decode(beam_search, model, images, 1, start_id=1,
    ...                                        end_id=2)
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"`max_shift` must be an integer >= 0; received {max_shift!r}")
    if max_shift == 0:
        return decode(model, images, **options)
    views = ShiftedViews(max_shift, dtype="float32")
    return decode(model, views(images), num_views=views.num_views, **options)
