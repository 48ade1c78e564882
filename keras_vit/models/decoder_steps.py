"""The decoder of a seq2seq model run one position at a time, with key/value caches.

`DecoderSteps(model)` takes a model built by `keras_vit.models.transformer` or
`image_to_sequence` (or reloaded from `.keras`: it only relies on layer names,
see `keras_vit.models.transformer`) and exposes the pieces a decoding loop needs:

* `encode(inputs)` -> `(memory, memory_mask)`: the encoder, run once;
* `cross_attention_cache(memory)`: every decoder block's cross-attention keys and
  values of the memory, projected once instead of at every step;
* `init_cache(batch)`: zero self-attention caches, one per block;
* `step(tokens, index, caches, cross, memory_mask)`: logits for the next token
  from the token at position `index`, and the updated caches;
* `prefix_logits(memory, memory_mask, prefix)`: the same logits recomputed for
  a whole prefix without caches (the reference, and the slow baseline).

Everything is `keras.ops` (runs under `tf.function` and on JAX) and shares the
model's layers and weights.
"""

import weakref

import keras
from keras import ops

from keras_vit.models.transformer import ENCODER_OUTPUTS, SOURCE_MASK


def _optional_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _residual(block, norm, x, sublayer):
    """The block's residual wiring at inference (no dropout): pre- or post-norm."""
    if block.norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


def _block_step(block, x, cache, index, cross_kv, memory_mask):
    """One `TransformerDecoderBlock` on a `(B, 1, D)` step, given the projected memory."""
    state = {}

    def self_attend(h):
        output, state["cache"] = block.self_attention.call_with_cache(h, cache, index)
        return output

    def cross_attend(h):
        attention = block.cross_attention
        output, _ = attention.attend(attention.query_dense(h), cross_kv[0], cross_kv[1],
                                     memory_mask)
        return attention.output_dense(output)

    x = _residual(block, block.norm1, x, self_attend)
    x = _residual(block, block.norm2, x, cross_attend)
    x = _residual(block, block.norm3, x, block.mlp)
    return x, state["cache"]


class DecoderSteps:
    """Step-by-step access to the decoder of a seq2seq model (shares its layers).

    Args:
        model: a model from `transformer` or `image_to_sequence` (possibly reloaded).

    Example:
    >>> steps = DecoderSteps(model)
    >>> memory, mask = steps.encode(source)
    >>> cross, caches = steps.cross_attention_cache(memory), steps.init_cache(batch, 10)
    >>> logits, caches = steps.step(start_tokens, 0, caches, cross, mask)
    """

    def __init__(self, model):
        try:
            memory = model.get_layer(ENCODER_OUTPUTS).output
        except ValueError:
            raise ValueError(f"model {model.name!r} has no {ENCODER_OUTPUTS!r} layer: build it "
                             "with keras_vit.models.transformer or image_to_sequence") from None
        mask_layer = _optional_layer(model, SOURCE_MASK)
        outputs = [memory] + ([mask_layer.output] if mask_layer is not None else [])
        self.encoder = keras.Model(model.inputs[0], outputs, name=f"{model.name}_encoder")
        self.has_mask = mask_layer is not None
        self.embedding = model.get_layer("target_embedding")
        self.scale = model.get_layer("target_scale")
        self.position = model.get_layer("target_position")
        self.blocks = []
        while _optional_layer(model, f"decoder_block_{len(self.blocks)}") is not None:
            self.blocks.append(model.get_layer(f"decoder_block_{len(self.blocks)}"))
        self.final_norm = _optional_layer(model, "decoder_norm")
        self.vocab_size = self.embedding.input_dim
        self.max_length = self.position.max_length

    def encode(self, inputs):
        """`(memory (B, S, D), memory_mask (B, 1, S) bool or None)` for the model's source."""
        outputs = self.encoder(inputs, training=False)
        if self.has_mask:
            return outputs[0], outputs[1]
        return (outputs[0] if isinstance(outputs, (list, tuple)) else outputs), None

    def cross_attention_cache(self, memory):
        """Per block, the cross-attention `(keys, values)`, each `(B, S, H, key_dim)`."""
        return [(block.cross_attention.key_dense(memory), block.cross_attention.value_dense(memory))
                for block in self.blocks]

    def init_cache(self, batch_size, length):
        """Per block, a zero self-attention cache `(B, 2, length, H, key_dim)`."""
        return [block.init_cache(batch_size, length) for block in self.blocks]

    def _logits(self, x):
        if self.final_norm is not None:
            x = self.final_norm(x)
        return ops.cast(self.embedding(x, reverse=True), "float32")

    def step(self, tokens, index, caches, cross, memory_mask):
        """Next-token logits for decoder position `index`.

        Args:
            tokens: int `(B,)`: the decoder input at position `index`.
            index: int or scalar tensor: the position, `< cache length`.
            caches: list from `init_cache` or the previous step.
            cross: list from `cross_attention_cache`.
            memory_mask: `(B, 1, S)` bool or None.

        Returns:
            `(logits (B, V) float32, new caches)`.
        """
        x = self.scale(self.embedding(ops.expand_dims(ops.cast(tokens, "int32"), 1)))
        x = x + ops.cast(ops.take(self.position.table, index, axis=0), x.dtype)
        new_caches = []
        for block, cache, cross_kv in zip(self.blocks, caches, cross):
            x, cache = _block_step(block, x, cache, index, cross_kv, memory_mask)
            new_caches.append(cache)
        return self._logits(x)[:, 0], new_caches

    def prefix_logits(self, memory, memory_mask, prefix):
        """Logits `(B, T, V)` for every position of `prefix` `(B, T)`, without caches."""
        x = self.position(self.scale(self.embedding(ops.cast(prefix, "int32"))))
        for block in self.blocks:
            x = block(x, memory, encoder_attention_mask=memory_mask, training=False)
        return self._logits(x)


_STEPS = weakref.WeakKeyDictionary()


def decoder_steps(model):
    """The `DecoderSteps` of `model`, built once per model object."""
    try:
        return _STEPS[model]
    except KeyError:
        _STEPS[model] = steps = DecoderSteps(model)
        return steps
