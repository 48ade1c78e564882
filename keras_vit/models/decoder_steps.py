"""The decoder of a seq2seq model run one position at a time, with key/value caches.

`DecoderSteps(model)` takes a model built by `keras_vit.models.transformer` or
`image_to_sequence` (or reloaded from `.keras`: it only relies on layer names,
see `keras_vit.models.transformer`) and exposes the pieces a decoding loop needs:

* `encode(inputs)` -> `(memory, memory_mask)`: the encoder, run once;
* `context(memory, memory_mask, length)`: everything a step needs that does not
  change from step to step, computed once before the loop: the decoder's
  weights read and fused (`keras_vit.models.one_token`), every block's
  cross-attention keys and values of the memory, the masks;
* `init_cache(batch, length)`: zero self-attention caches, one per block;
* `step(tokens, index, caches, context)`: logits for the next token from the
  token at position `index`, and the updated caches;
* `prefix_logits(memory, memory_mask, prefix)`: the same logits recomputed for
  a whole prefix through the layers, without caches (the reference, and the
  slow baseline).

Everything is `keras.ops` (runs under `tf.function` and on JAX) and uses the
model's own weights.
"""

import collections
import weakref

import keras
from keras import ops

from keras_vit.models import one_token
from keras_vit.models.transformer import ENCODER_OUTPUTS, SOURCE_MASK

#: What `DecoderSteps.context` computes once per decode call.
StepContext = collections.namedtuple("StepContext", [
    "blocks", "cross", "cross_bias", "embedding", "positions", "cache_positions", "causal",
    "final_norm", "output"])


def _optional_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


class DecoderSteps:
    """Step-by-step access to the decoder of a seq2seq model (shares its layers).

    Args:
        model: a model from `transformer` or `image_to_sequence` (possibly reloaded).

    Example:
    >>> steps = DecoderSteps(model)
    >>> memory, mask = steps.encode(source)
    >>> context, caches = steps.context(memory, mask, 10), steps.init_cache(batch, 10)
    >>> logits, caches = steps.step(start_tokens, 0, caches, context)
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

    def context(self, memory, memory_mask, length):
        """A `StepContext` for `step`: what stays the same at every step, computed once.

        Reads the decoder's current weights (call it once per decode, inside
        the traced function, so later weight updates are seen).

        Args:
            memory: `(B, S, D)` from `encode`.
            memory_mask: `(B, 1, S)` bool from `encode`, or None.
            length: int. The cache length (most positions decoded).
        """
        positions = ops.arange(length, dtype="int32")
        # causal[i] (L, 1): 0 on keys <= i, MASKED after; picked per step.
        visible = ops.greater_equal(positions[:, None], positions[None, :])
        causal = ops.where(visible, 0.0, one_token.MASKED)[:, :, None]
        # Embedding and its sqrt(d) scale of every token id, run once through the layers.
        embedding = self.scale(self.embedding(ops.arange(self.vocab_size, dtype="int32")))
        return StepContext(
            blocks=[one_token.read_block(block) for block in self.blocks],
            cross=[one_token.cross_keys_values(block, memory, memory_mask)
                   for block in self.blocks],
            cross_bias=one_token.memory_bias(memory_mask),
            embedding=embedding,
            positions=one_token.cast_to(self.position.table[:length], embedding.dtype),
            cache_positions=positions[:, None], causal=ops.cast(causal, "float32"),
            final_norm=(None if self.final_norm is None
                        else one_token.read_norm(self.final_norm)),
            output=one_token.read_output_projection(self.embedding))

    def init_cache(self, batch_size, length):
        """Per block, a zero self-attention cache `(B, length, 2 * H * key_dim)` (keys, values)."""
        return [ops.zeros((batch_size, length, 2 * block.num_heads
                           * block.self_attention.key_dim), dtype=block.compute_dtype)
                for block in self.blocks]

    def step(self, tokens, index, caches, context):
        """Next-token logits for decoder position `index`.

        Args:
            tokens: int `(B,)`: the decoder input at position `index`.
            index: int or scalar int32 tensor: the position, `< cache length`.
            caches: list from `init_cache` or the previous step.
            context: the `StepContext` from `context`.

        Returns:
            `(logits (B, V) float32, new caches)`.
        """
        # Indexing, not ops.take: take adds negative-index handling (4 ops on TF).
        x = ops.take(context.embedding, tokens, axis=0) + context.positions[index]
        write = ops.cast(ops.equal(context.cache_positions, index), x.dtype)  # (L, 1)
        write = (write, 1 - write)
        causal = context.causal[index]  # (L, 1)
        new_caches = []
        for weights, cache, cross in zip(context.blocks, caches, context.cross):
            x, cache = one_token.block_step(weights, x, cache, write, causal, cross,
                                            context.cross_bias)
            new_caches.append(cache)
        if context.final_norm is not None:
            x = one_token.layer_norm(x, context.final_norm)
        return one_token.output_logits(x, context.output), new_caches

    def _logits(self, x):
        if self.final_norm is not None:
            x = self.final_norm(x)
        return ops.cast(self.embedding(x, reverse=True), "float32")

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
