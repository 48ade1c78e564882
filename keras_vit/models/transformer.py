"""Encoder-decoder Transformers as functional Keras models: text-to-text and image-to-text.

Both factories share one decoder and one layer-naming contract, which
`keras_vit.models.decoding` relies on to run the decoder step by step:

* `encoder_outputs` (Identity): the memory `(B, S, D_enc)` the decoder attends to;
* `source_mask` (PaddingMask, text only): `(B, 1, S)` booleans, `True` = real token;
* `target_embedding` (ReversibleEmbedding), `target_scale` (Rescaling by sqrt(d)),
  `target_position` (SinusoidalPositionEncoding);
* `decoder_block_0 .. decoder_block_{N-1}` (TransformerDecoderBlock);
* `decoder_norm` (LayerNormalization, pre-norm models only);
* `logits` (float32): `target_embedding(h, reverse=True)`, i.e. the output
  projection, tied to the embedding or separate.

Models take `[source, decoder_tokens]` and return float32 logits `(B, T, V)`;
they train with teacher forcing: `decoder_tokens = [start] + targets[:-1]`
(see `teacher_forcing_inputs`).
"""

import math

import keras
from keras import ops

from keras_vit.layers import (
    SinusoidalPositionEncoding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from keras_vit.layers.validation import check_positive_int, check_rate
from keras_vit.models.vit import token_features, vision_transformer

#: Name of the layer whose output is the encoder memory, in every seq2seq model.
ENCODER_OUTPUTS = "encoder_outputs"
#: Name of the `(B, 1, S)` source padding mask layer (text sources only).
SOURCE_MASK = "source_mask"


@keras.saving.register_keras_serializable(package="keras_vit")
class PaddingMask(keras.layers.Layer):
    """`(B, S)` token ids -> boolean attention mask `(B, 1, S)`, `False` at `pad_id`.

    The singleton query axis broadcasts over every query of an attention layer.

    Args:
        pad_id: int >= 0. The padding token id.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> PaddingMask(pad_id=0)(np.array([[5, 3, 0]]))  # [[[True, True, False]]]
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = _check_token_id("pad_id", pad_id)

    def call(self, tokens):
        return ops.expand_dims(ops.not_equal(tokens, self.pad_id), 1)

    def compute_output_spec(self, tokens):
        return keras.KerasTensor((tokens.shape[0], 1, tokens.shape[1]), dtype="bool")

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id})
        return config


def _check_token_id(name, value, vocab_size=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0; received {name}={value!r}")
    if vocab_size is not None and value >= vocab_size:
        raise ValueError(f"`{name}`={value} is outside the vocabulary of size {vocab_size}")
    return value


def teacher_forcing_inputs(targets, start_id):
    """Decoder inputs for teacher forcing: `[start_id] + targets[:, :-1]`.

    Args:
        targets: int tensor `(B, T)`: the tokens to predict, ending with the end
            token and padded.
        start_id: int. The start token.

    Returns:
        int32 tensor `(B, T)`.

    Example:
    >>> teacher_forcing_inputs(np.array([[5, 6, 2, 0]]), start_id=1)  # [[1, 5, 6, 2]]
    """
    targets = ops.cast(targets, "int32")
    start = ops.full((ops.shape(targets)[0], 1), start_id, dtype="int32")
    return ops.concatenate([start, targets[:, :-1]], axis=1)


def _embedding(vocab_size, dim, tie, name):
    # N(0, 1/d) entries scaled by sqrt(d): unit-variance token vectors, the scale
    # of the sinusoids, and O(1) logits when the projection is tied.
    return keras.layers.ReversibleEmbedding(
        vocab_size, dim, tie_weights=tie, reverse_dtype="float32", name=name,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=dim ** -0.5))


def _embed_tokens(tokens, embedding, max_length, dropout, prefix):
    x = embedding(tokens)
    x = keras.layers.Rescaling(math.sqrt(embedding.output_dim), name=f"{prefix}_scale")(x)
    return SinusoidalPositionEncoding(max_length, dropout=dropout, name=f"{prefix}_position")(x)


def _decoder(decoder_tokens, memory, memory_mask, config):
    """Target embedding, `N` decoder blocks, (final norm,) float32 logits."""
    embedding = _embedding(config["vocab_size"], config["hidden_dim"],
                           config["tie_embeddings"], "target_embedding")
    x = _embed_tokens(decoder_tokens, embedding, config["max_length"], config["dropout"],
                      "target")
    for index in range(config["num_layers"]):
        x = TransformerDecoderBlock(
            config["num_heads"], config["mlp_dim"], dropout=config["dropout"],
            attention_dropout=config["attention_dropout"], norm_first=config["norm_first"],
            activation=config["activation"], name=f"decoder_block_{index}",
        )(x, memory, encoder_attention_mask=memory_mask)
    if config["norm_first"]:
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")(x)
    logits = embedding(x, reverse=True)
    return keras.layers.Activation("linear", dtype="float32", name="logits")(logits)


def _decoder_config(vocab_size, num_layers, hidden_dim, num_heads, mlp_dim, max_length,
                    dropout, attention_dropout, tie_embeddings, norm_first, activation,
                    argument_names=None):
    """The decoder's settings, checked; `argument_names` maps them to the caller's
    argument names for the messages (e.g. `num_layers` -> `decoder_layers`)."""
    config = dict(vocab_size=vocab_size, num_layers=num_layers, hidden_dim=hidden_dim,
                  num_heads=num_heads, mlp_dim=mlp_dim, max_length=max_length)
    names = {key: key for key in config} | dict(argument_names or {})
    for key, value in config.items():
        check_positive_int(names[key], value)
    if hidden_dim % num_heads:
        raise ValueError(f"{names['hidden_dim']}={hidden_dim} is not divisible by "
                         f"{names['num_heads']}={num_heads}")
    config.update(dropout=check_rate("dropout", dropout),
                  attention_dropout=check_rate("attention_dropout", attention_dropout),
                  tie_embeddings=bool(tie_embeddings), norm_first=bool(norm_first),
                  activation=activation)
    return config


def transformer(source_vocab_size, target_vocab_size, *, num_layers, hidden_dim, num_heads,
                mlp_dim, max_length, max_source_length=None, dropout=0.0, attention_dropout=0.0,
                tie_embeddings=False, pad_id=0, norm_first=True, activation="relu",
                name="transformer"):
    """The encoder-decoder Transformer of "Attention Is All You Need" as a `keras.Model`.

    Inputs `[source_tokens (B, S), decoder_tokens (B, T)]` (int, `pad_id`
    padded, `S <= max_source_length`, `T <= max_length`); output float32 logits `(B, T, target_vocab)`
    for the token after each decoder position. Source padding is masked in the
    encoder's self-attention and the decoder's cross-attention; the decoder's
    self-attention is causal (padded target positions only need masking in the
    loss, e.g. `SparseCategoricalCrossentropy(from_logits=True, ignore_class=pad_id)`).

    Args:
        source_vocab_size: int > 0. Source vocabulary size.
        target_vocab_size: int > 0. Target vocabulary size.
        num_layers: int > 0. Blocks in the encoder and in the decoder.
        hidden_dim: int > 0. Model width `d`, divisible by `num_heads`.
        num_heads: int > 0. Attention heads.
        mlp_dim: int > 0. Hidden width of the position-wise MLPs.
        max_length: int > 0. Longest decoder sequence (and generated output).
        max_source_length: int > 0. Longest source; defaults to `max_length`.
        dropout: float in [0, 1). After the embeddings and in every block.
        attention_dropout: float in [0, 1). On attention weights.
        tie_embeddings: bool. Output projection = transposed target embedding.
        pad_id: int. Padding id of the source (masked) and target.
        norm_first: bool. Pre-norm blocks plus a final LayerNorm on each stack
            (stable to train); `False`: the original post-norm blocks.
        activation: MLP activation. Defaults to `"relu"` (the paper's).
        name: str. Model name.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = transformer(13, 13, num_layers=2, hidden_dim=32, num_heads=4, mlp_dim=64,
    ...                     max_length=12)
    >>> model([np.ones((2, 7), "int32"), np.ones((2, 5), "int32")]).shape  # (2, 5, 13)

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    config = _decoder_config(target_vocab_size, num_layers, hidden_dim, num_heads, mlp_dim,
                             max_length, dropout, attention_dropout, tie_embeddings, norm_first,
                             activation, argument_names={"vocab_size": "target_vocab_size"})
    check_positive_int("source_vocab_size", source_vocab_size)
    pad_id = _check_token_id("pad_id", pad_id, min(source_vocab_size, target_vocab_size))
    source = keras.Input((None,), dtype="int32", name="source_tokens")
    decoder_tokens = keras.Input((None,), dtype="int32", name="decoder_tokens")
    mask = PaddingMask(pad_id, name=SOURCE_MASK)(source)
    source_embedding = keras.layers.Embedding(
        source_vocab_size, hidden_dim, name="source_embedding",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=hidden_dim ** -0.5))
    max_source_length = check_positive_int("max_source_length", max_source_length or max_length)
    x = _embed_tokens(source, source_embedding, max_source_length, dropout, "source")
    for index in range(num_layers):
        x = TransformerEncoderBlock(num_heads, mlp_dim, dropout=dropout,
                                    attention_dropout=attention_dropout, norm_first=norm_first,
                                    activation=activation, name=f"encoder_block_{index}",
                                    )(x, attention_mask=mask)
    if norm_first:
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    memory = keras.layers.Identity(name=ENCODER_OUTPUTS)(x)
    logits = _decoder(decoder_tokens, memory, mask, config)
    return keras.Model([source, decoder_tokens], logits, name=name)


def image_to_sequence(variant, image_shape, vocab_size, *, max_length, decoder_layers,
                      decoder_dim=None, decoder_heads=None, decoder_mlp_dim=None, dropout=0.0,
                      attention_dropout=0.0, tie_embeddings=False, norm_first=True,
                      activation="gelu", encoder=None, name=None, **vit_options):
    """A ViT encoder over all patch tokens and a Transformer decoder: images to text.

    Inputs `[images (B, H, W, C) in [0, 255], decoder_tokens (B, T)]`; output
    float32 logits `(B, T, vocab_size)`. The decoder cross-attends to every
    token of the ViT trunk (its `encoder_norm` applied to every token,
    `token_features`).

    Args:
        variant: str. ViT variant, e.g. `"Ti/4"` (see `vision_transformer`).
        image_shape: (int, int, int). `(height, width, channels)`.
        vocab_size: int > 0. Output vocabulary size.
        max_length: int > 0. Longest decoder sequence.
        decoder_layers: int > 0. Decoder blocks.
        decoder_dim: int. Decoder width; defaults to the ViT's `hidden_dim`.
        decoder_heads: int. Decoder heads; defaults to the ViT's.
        decoder_mlp_dim: int. Decoder MLP width; defaults to the ViT's.
        dropout, attention_dropout: float in [0, 1). Encoder and decoder dropout.
        tie_embeddings: bool. Output projection = transposed token embedding.
        norm_first: bool. Pre-norm decoder blocks plus a final LayerNorm.
        activation: decoder MLP activation. Defaults to `"gelu"` (as in ViT).
        encoder: optional prebuilt ViT `keras.Model` (e.g. with pretrained
            weights); its normalised tokens are used, class token included
            (`token_features`: a token-pooled encoder's last block is called
            again on every token, same weights).
            By default one is built with `pooling="gap"` (patch tokens only).
        name: str. Model name. Defaults to `"image_to_sequence"`.
        **vit_options: further `vision_transformer` arguments (`patch_size`,
            `hidden_dim`, `depth`, `num_heads`, `mlp_dim`, `position_embedding`,
            `mean`, `std`, `drop_path`, ...).

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = image_to_sequence("Ti/4", (16, 64, 1), 13, max_length=7, decoder_layers=1,
    ...                           hidden_dim=32, depth=2, num_heads=2, mlp_dim=64)
    >>> model([np.zeros((1, 16, 64, 1)), np.ones((1, 7), "int32")]).shape  # (1, 7, 13)
    """
    if encoder is None:
        encoder = vision_transformer(variant, image_shape, 1, include_top=False, pooling="gap",
                                     dropout=dropout, attention_dropout=attention_dropout,
                                     **vit_options)
    elif vit_options:
        raise ValueError(f"give either `encoder` or ViT options, not both; received "
                         f"{sorted(vit_options)} with a prebuilt encoder")
    elif tuple(encoder.inputs[0].shape[1:]) != tuple(image_shape):
        raise ValueError(f"the encoder takes images of shape {tuple(encoder.inputs[0].shape[1:])}"
                         f"; received image_shape={tuple(image_shape)}")
    trunk = token_features(encoder)
    vit_block = encoder.get_layer("encoder_block_0")
    config = _decoder_config(
        vocab_size, decoder_layers, decoder_dim or trunk.shape[-1],
        decoder_heads or vit_block.num_heads, decoder_mlp_dim or vit_block.mlp_dim, max_length,
        dropout, attention_dropout, tie_embeddings, norm_first, activation,
        argument_names={"num_layers": "decoder_layers", "hidden_dim": "decoder_dim (the "
                        "encoder's width by default)", "num_heads": "decoder_heads (the "
                        "encoder's by default)", "mlp_dim": "decoder_mlp_dim"})
    memory = keras.layers.Identity(name=ENCODER_OUTPUTS)(trunk)
    decoder_tokens = keras.Input((None,), dtype="int32", name="decoder_tokens")
    logits = _decoder(decoder_tokens, memory, None, config)
    return keras.Model([encoder.inputs[0], decoder_tokens], logits,
                       name=name or "image_to_sequence")
