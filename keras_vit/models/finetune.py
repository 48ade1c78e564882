"""Fine-tuning helpers for a `vision_transformer` model: a new head, a frozen backbone."""

import keras

HEAD_LAYERS = ("head", "head_distillation")


def _heads(model):
    names = {layer.name for layer in model.layers}
    heads = [model.get_layer(n) for n in HEAD_LAYERS if n in names]
    if not heads:
        raise ValueError(f"model {model.name!r} has no 'head' layer (built with "
                         "include_top=False?)")
    return heads


def replace_head(model, num_classes, name=None):
    """The same model with a new zero-initialised head of `num_classes` outputs.

    As in the ViT paper's fine-tuning, the new head's kernel and bias are
    zeros. A DeiT model gets both heads replaced (their mean stays the
    output). The backbone layers are shared with `model`, not copied. When
    `num_classes` equals the current head's size, `model` is returned as is.

    Args:
        model: a model from `vision_transformer` or `load_checkpoint`.
        num_classes: int > 0. Classes of the new head.
        name: str. Name of the new model; defaults to `model.name`.

    Returns:
        A functional `keras.Model` with float32 logits `(B, num_classes)`.

    Example:
    >>> model = replace_head(load_checkpoint("ViT-B_16.npz"), num_classes=10)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"`num_classes` must be a positive integer; received {num_classes!r}")
    heads = _heads(model)
    if heads[0].units == num_classes:
        return model
    outputs = []
    for old in heads:
        new = keras.layers.Dense(num_classes, activation=old.activation, name=old.name,
                                 kernel_initializer="zeros", bias_initializer="zeros",
                                 dtype="float32")
        outputs.append(new(old.input))
    if len(outputs) > 1:
        outputs = [keras.layers.Average(name="head_average", dtype="float32")(outputs)]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs[0], name=name or model.name)


def freeze_backbone(model, trainable_layers=HEAD_LAYERS):
    """Freezes every layer but the head(s), for linear-probe fine-tuning.

    Compile (or re-compile) the model afterwards: Keras reads `trainable`
    when it compiles.

    Args:
        model: a model from `vision_transformer` or `load_checkpoint`.
        trainable_layers: names of the layers left trainable.

    Returns:
        `model`, with `trainable` set on its layers.

    Example:
    >>> freeze_backbone(model).compile(optimizer="adam", loss=...)
    """
    _heads(model)
    for layer in model.layers:
        layer.trainable = layer.name in trainable_layers
    return model
