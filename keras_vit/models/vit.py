"""The Vision Transformer family as one factory of functional Keras models."""

import keras

from keras_vit.layers import (
    ClassToken,
    PatchEmbedding,
    PositionEmbedding,
    SinCosPositionEncoding2D,
    TokenPooling,
    TransformerEncoderBlock,
)
from keras_vit.layers.validation import (
    check_positive_float,
    check_positive_int,
    check_rate,
    is_int,
)
from keras_vit.models.activations import mlp_activation as mlp_activation_fn
from keras_vit.models.attention_maps import encoder_blocks

# Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020, table 1; Ti and S from
# Touvron et al., "Training data-efficient image transformers" (DeiT), 2020.
VIT_VARIANTS = {
    "Ti": dict(hidden_dim=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(hidden_dim=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(hidden_dim=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(hidden_dim=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(hidden_dim=1280, depth=32, mlp_dim=5120, num_heads=16),
}
POSITION_EMBEDDINGS = ("learned", "sincos2d")


def parse_variant(variant):
    """`"B/16"` -> `("B", 16)`; `"B"` -> `("B", None)`.

    Args:
        variant: str. A size from `VIT_VARIANTS`, optionally `/patch_size`.

    Returns:
        `(size, patch_size or None)`.
    """
    size, _, patch = str(variant).partition("/")
    if size not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; expected one of "
                         f"{sorted(VIT_VARIANTS)} with an optional '/patch_size', e.g. 'B/16'")
    if patch and not patch.isdigit():
        raise ValueError(f"the patch size in variant {variant!r} must be a positive integer")
    return size, (int(patch) if patch else None)


def _image_shape(image_shape):
    """`(height, width, channels)` as positive Python ints; numpy integers accepted.

    Floats or None are refused (truncating 8.5 to 8 would build another model).
    """
    try:
        shape = () if isinstance(image_shape, str) else tuple(image_shape)
    except TypeError:  # not a sequence
        shape = ()
    if len(shape) != 3 or not all(is_int(v) and v > 0 for v in shape):
        raise ValueError("`image_shape` must be (height, width, channels), three positive "
                         f"integers; received {image_shape!r}")
    return tuple(int(v) for v in shape)


def _normalisation(mean, std, channels):
    """Scale and offset mapping [0, 255] pixels to `(x / 255 - mean) / std`, per channel."""
    def per_channel(value, name):
        values = [float(value)] * channels if isinstance(value, (int, float)) else list(value)
        if len(values) != channels:
            counts = "1 value" if channels == 1 else f"1 or {channels} values"
            raise ValueError(f"`{name}` needs {counts} (one per channel of the "
                             f"{channels}-channel images); received {value!r}")
        return values

    mean, std = per_channel(mean, "mean"), per_channel(std, "std")
    if any(s <= 0 for s in std):
        raise ValueError(f"`std` must be positive; received std={std!r}")
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    # Scalars when every channel agrees: a per-channel multiply-add over full
    # images costs about 5x a scalar one on CPU (benchmarks/README.md).
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        return scale[0], offset[0]
    return scale, offset


def _check_tokens(pooling, class_token, distillation_token, position_embedding):
    """Validates the token layout; returns `(class_token, number of prefix tokens)`."""
    if pooling not in ("token", "gap"):
        raise ValueError(f"`pooling` must be 'token' or 'gap'; received pooling={pooling!r}")
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(f"`position_embedding` must be one of {POSITION_EMBEDDINGS}; "
                         f"received position_embedding={position_embedding!r}")
    class_token = pooling == "token" if class_token is None else bool(class_token)
    if pooling == "token" and not class_token:
        raise ValueError("pooling='token' needs the class token; received class_token=False")
    if distillation_token and pooling != "token":
        raise ValueError("`distillation_token=True` needs pooling='token' (DeiT); "
                         f"received pooling={pooling!r}")
    return class_token, int(class_token) + int(bool(distillation_token))


def _embed(x, grid, class_token, distillation_token, position_embedding, dtype):
    """Patch tokens -> `[class, distillation, patches]` tokens with positions added."""
    def prefix_tokens(x):
        # ClassToken prepends, so the distillation token goes in first: [cls, dist, patches].
        if distillation_token:
            x = ClassToken(name="distillation_token", dtype=dtype)(x)
        if class_token:
            x = ClassToken(name="class_token", dtype=dtype)(x)
        return x

    if position_embedding == "learned":
        x = prefix_tokens(x)
        return PositionEmbedding(x.shape[1], name="position_embedding", dtype=dtype)(x)
    x = SinCosPositionEncoding2D(grid, name="position_embedding", dtype=dtype)(x)
    return prefix_tokens(x)


def _token_at(x, index, name, dtype):
    """Token `index` of `(B, T, d)` as `(B, d)`, with serializable built-in layers."""
    x = keras.layers.Cropping1D((index, x.shape[1] - index - 1), name=f"{name}_crop",
                                dtype=dtype)(x)
    return keras.layers.Reshape((x.shape[-1],), name=name, dtype=dtype)(x)


def _classify(x, *, pooling, num_prefix, distillation_token, fc_norm, epsilon,
              representation_size, include_top, num_classes, classifier_activation, dtype):
    """Final norm, pooling, optional pre-logits, and the head(s): tokens -> logits/features."""
    norm = dict(epsilon=epsilon, dtype=dtype)
    if not fc_norm:
        x = keras.layers.LayerNormalization(name="encoder_norm", **norm)(x)
    tokens = x
    x = TokenPooling(pooling, num_prefix_tokens=num_prefix, name="pooling", dtype=dtype)(x)
    if fc_norm:  # timm's global_pool="avg": normalise the pooled features instead of the tokens
        x = keras.layers.LayerNormalization(name="fc_norm", **norm)(x)
    if representation_size is not None:
        x = keras.layers.Dense(check_positive_int("representation_size", representation_size),
                               activation="tanh", name="pre_logits", dtype=dtype)(x)
    distilled = _token_at(tokens, 1, "distillation_pooling", dtype) if distillation_token else None
    if not include_top:
        if distilled is not None:  # DeiT's features: the mean of both tokens
            x = keras.layers.Average(name="token_average", dtype=dtype)([x, distilled])
        return keras.layers.Activation("linear", dtype="float32", name="features")(x)
    head = dict(activation=classifier_activation, dtype="float32")
    logits = keras.layers.Dense(num_classes, name="head", **head)(x)
    if distilled is None:
        return logits
    # DeiT at inference: the mean of the class head and the distillation head.
    distilled = keras.layers.Dense(num_classes, name="head_distillation", **head)(distilled)
    return keras.layers.Average(name="head_average", dtype="float32")([logits, distilled])


def vision_transformer(variant="Ti/16", image_shape=(224, 224, 3), num_classes=1000, *,
                       patch_size=None, hidden_dim=None, depth=None, mlp_dim=None,
                       num_heads=None, pooling="token", position_embedding="learned",
                       dropout=0.0, attention_dropout=0.0, drop_path=0.0,
                       representation_size=None, mean=0.5, std=0.5,
                       classifier_activation=None, include_top=True, name=None,
                       class_token=None, distillation_token=False, fc_norm=False,
                       layer_norm_epsilon=1e-6, mlp_activation="gelu", dtype=None):
    """Builds a Vision Transformer as a functional `keras.Model`.

    Inputs are images `(B, H, W, C)` in raw pixel scale [0, 255]; the model
    rescales them to `(x / 255 - mean) / std` itself. Outputs are float32
    logits `(B, num_classes)` (or float32 features with `include_top=False`),
    whatever the dtype policy.

    With `pooling="token"` the head reads only the class (and distillation)
    token, so the last block computes only those rows
    (`TransformerEncoderBlock(num_output_tokens=...)`): the same logits and
    gradients for ~7 % fewer FLOPs at Ti/16. `encoder_norm` then outputs
    those tokens; `token_features(model)` gives every token's.

    Args:
        variant: str. `"Ti" | "S" | "B" | "L" | "H"` with the patch size after a
            slash, e.g. `"B/16"`. Every field is overridable below.
        image_shape: (int, int, int). `(height, width, channels)`; any size
            divisible by the patch size, any channel count.
        num_classes: int > 0. Classes of the head.
        patch_size: int or (int, int). Overrides the variant's patch size.
        hidden_dim, depth, mlp_dim, num_heads: int. Override the variant's
            width, number of blocks, MLP width and attention heads.
        pooling: `"token"` (class token) or `"gap"` (mean of the patch tokens).
        position_embedding: `"learned"` or `"sincos2d"` (fixed).
        dropout: float in [0, 1). Dropout after the embeddings and in each block.
        attention_dropout: float in [0, 1). Dropout on attention weights.
        drop_path: float in [0, 1). Stochastic depth of the last block, rising
            linearly from 0 over the blocks.
        representation_size: int or None. Width of a tanh pre-logits layer.
        mean, std: float or per-channel list, in [0, 1] units. Input
            normalisation. Defaults map [0, 255] to [-1, 1].
        classifier_activation: activation of the head; `None` gives logits.
        include_top: bool. Add the classification head.
        name: str. Model name. Defaults to e.g. `"vit_ti16"`.
        class_token: bool or None. Prepend a class token; defaults to
            `pooling == "token"`. With `pooling="gap"` it is kept out of the mean
            (timm's `global_pool="avg"` models).
        distillation_token: bool. DeiT's second prefix token with its own head
            `head_distillation`; the logits are the mean of both heads.
        fc_norm: bool. Normalise the pooled features (`fc_norm`) instead of the
            tokens (`encoder_norm`), as timm's average-pooled models do.
        layer_norm_epsilon: float > 0. Epsilon of every layer norm.
        mlp_activation: `"gelu"` (exact, Keras/PyTorch) or `"gelu_tanh"` (the tanh
            approximation of Flax, used by Google's checkpoints).
        dtype: dtype policy of the layers; `None` uses the global policy.

    Returns:
        A `keras.Model`.

    Example:
    >>> model = vision_transformer("Ti/4", image_shape=(8, 8, 1), num_classes=10,
    ...                            depth=2, hidden_dim=32, num_heads=2, mlp_dim=64)
    >>> model(np.zeros((1, 8, 8, 1))).shape  # (1, 10)

    References:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
        Image Recognition at Scale", ICLR 2021; Touvron et al., "Training
        data-efficient image transformers & distillation through attention", 2021.
    """
    size, variant_patch = parse_variant(variant)
    config = dict(VIT_VARIANTS[size])
    overrides = dict(hidden_dim=hidden_dim, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    config.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in config.items():
        check_positive_int(key, value)
    patch_size = variant_patch if patch_size is None else patch_size
    if patch_size is None:
        raise ValueError(f"no patch size: give variant like '{size}/16' or patch_size=")
    image_shape = _image_shape(image_shape)
    if include_top:  # no head, no classes: features only
        check_positive_int("num_classes", num_classes)
    class_token, num_prefix = _check_tokens(pooling, class_token, distillation_token,
                                            position_embedding)
    if config["hidden_dim"] % config["num_heads"]:
        raise ValueError(f"hidden_dim={config['hidden_dim']} is not divisible by "
                         f"num_heads={config['num_heads']}")
    for rate_name, rate in (("dropout", dropout), ("attention_dropout", attention_dropout),
                            ("drop_path", drop_path)):
        check_rate(rate_name, rate)
    epsilon = check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
    activation = mlp_activation_fn(mlp_activation)
    patching = PatchEmbedding(patch_size, config["hidden_dim"], name="patch_embedding",
                              dtype=dtype)
    grid = patching.grid_size(image_shape)  # raises when the patch size does not divide
    scale, offset = _normalisation(mean, std, image_shape[-1])

    images = keras.Input(image_shape, name="images")
    x = keras.layers.Rescaling(scale, offset, name="normalisation", dtype=dtype)(images)
    x = _embed(patching(x), grid, class_token, distillation_token, position_embedding, dtype)
    x = keras.layers.Dropout(dropout, name="embedding_dropout", dtype=dtype)(x)
    for index in range(config["depth"]):
        rate = drop_path * index / max(config["depth"] - 1, 1)
        last = index == config["depth"] - 1
        # Token pooling reads only the class (and distillation) token: the last
        # block computes those rows alone (~7 % of a Ti/16's FLOPs saved, same values).
        kept = dict(num_output_tokens=num_prefix) if last and pooling == "token" else {}
        x = TransformerEncoderBlock(config["num_heads"], config["mlp_dim"], dropout=dropout,
                                    attention_dropout=attention_dropout, drop_path=rate,
                                    norm_first=True, activation=activation, epsilon=epsilon,
                                    name=f"encoder_block_{index}", dtype=dtype)(x, **kept)
    x = _classify(x, pooling=pooling, num_prefix=num_prefix,
                  distillation_token=distillation_token, fc_norm=fc_norm, epsilon=epsilon,
                  representation_size=representation_size, include_top=include_top,
                  num_classes=num_classes, classifier_activation=classifier_activation,
                  dtype=dtype)
    if name is None:
        name = f"vit_{size.lower()}{patching.patch_size[0]}"
    return keras.Model(images, x, name=name)


def token_features(model):
    """Every token's normalised output (`encoder_norm`) of a built ViT, as a symbolic tensor.

    A token-pooled model's last block computes only its class (and
    distillation) token, so `model.get_layer("encoder_norm").output` holds
    only those; here that block and the norm are called again, same weights,
    on the block's full input. Other models' `encoder_norm` output is
    returned as it is.

    Args:
        model: a functional model from `vision_transformer` or `load_checkpoint`.

    Returns:
        A `(B, T, d)` KerasTensor of `model`'s graph, all `T` tokens.

    Raises:
        ValueError: `model` has no `encoder_norm` (`fc_norm=True` models) or
            no `TransformerEncoderBlock`.

    Example:
    >>> features = keras.Model(model.inputs[0], token_features(model))
    >>> features(images).shape  # (B, 1 + patches, hidden_dim)
    """
    last = encoder_blocks(model)[-1]
    if "encoder_norm" not in [layer.name for layer in model.layers]:
        raise ValueError(f"model {model.name!r} has no `encoder_norm` (fc_norm models "
                         "normalise pooled features only)")
    norm = model.get_layer("encoder_norm")
    if tuple(last.output.shape) == tuple(last.input.shape):
        return norm.output
    return norm(last(last.input))
