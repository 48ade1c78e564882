"""Cached greedy decoding against full-prefix recomputation, at growing output lengths.

Model: `image_to_sequence("Ti/4")` on 16x64x1 images (the `digit_strings`
canvas; 64 patch tokens of width 64, 4 encoder blocks, 2 decoder blocks, 13
tokens), batch 32, float32, untrained (speed does not depend on the weights;
the end id is one the model never emits, so every run makes `length` steps).

- ours: `keras_vit.models.decoding.greedy_decode` in a `tf.function`: one
  while loop, self-attention key/value cache, cross-attention keys/values of
  the image tokens projected once;
- peer "decoder": the encoder once, then per step the whole decoder over the
  prefix so far (`DecoderSteps.prefix_logits`: no cache, cross-attention
  keys/values recomputed), unrolled in a `tf.function` (static shapes, its best
  case);
- peer "model": the full model on `[images, prefix]` per step (encoder included),
  what calling `model.predict` in a loop does.

Reported ratio: peer seconds / ours seconds (> 1: caching faster), and the
same ratio with the encoder's time (measured alone, shared by both) taken out
of both sides ("decoder-only"). Target: >= 3x against the decoder baseline at
length 5, growing with length. With `--xla` the cached loop and the decoder
baseline are also timed under XLA (`jit_compile=True`).

Measured on this small model the per-step cost is dominated by the number of
ops each step runs (~350 in the loop body), not by FLOPs: see benchmarks/README.md.
"""

import itertools
import statistics
import time

from benchmarks import common

IMAGE_SHAPE = (16, 64, 1)
VOCAB = 13
START = 1
BATCH = 32
MODEL = dict(max_length=64, decoder_layers=2, hidden_dim=64, depth=4, num_heads=4, mlp_dim=128)
LENGTHS = (5, 10, 20, 40)
QUICK_LENGTHS = (5, 20)
TARGET_RATIO_AT_5 = 3.0


def _median_seconds(fn, calls=5):
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def build_model():
    """The benchmark's untrained image-to-sequence model."""
    from keras_vit.models.transformer import image_to_sequence

    return image_to_sequence("Ti/4", IMAGE_SHAPE, VOCAB, **MODEL)


def unused_token(model, images, length):
    """A token id greedy decoding of `images` never emits: as end id, nothing stops early."""
    import numpy as np

    from keras_vit.models.decoding import greedy_decode

    tokens, _ = greedy_decode(model, images, max_length=length, start_id=START, end_id=2)
    unused = sorted(set(range(3, VOCAB)) - set(np.asarray(tokens).ravel().tolist()))
    if not unused:
        raise RuntimeError("the untrained model emits every token; change the seed")
    return unused[0]


def decoders(model, length, end_id, jit_compile=False):
    """`(cached, recompute_decoder, recompute_model)` tf.functions of images."""
    import tensorflow as tf
    from keras import ops

    from keras_vit.models.decoder_steps import decoder_steps
    from keras_vit.models.decoding import greedy_decode

    steps = decoder_steps(model)

    @tf.function(jit_compile=jit_compile)
    def cached(images):
        return greedy_decode(model, images, max_length=length, start_id=START, end_id=end_id)[0]

    def unrolled(next_logits):
        def decode(images):
            memory, mask = steps.encode(images)
            prefix = tf.fill((tf.shape(images)[0], 1), START)
            for _ in range(length):
                logits = next_logits(images, memory, mask, prefix)
                chosen = tf.cast(ops.argmax(logits[:, 2:], axis=-1) + 2, tf.int32)
                prefix = tf.concat([prefix, chosen[:, None]], axis=1)
            return prefix[:, 1:]
        return tf.function(decode, jit_compile=jit_compile)

    by_decoder = unrolled(lambda _, memory, mask, prefix:
                          steps.prefix_logits(memory, mask, prefix)[:, -1])
    by_model = unrolled(lambda images, _, __, prefix: model([images, prefix])[:, -1])
    return cached, by_decoder, by_model


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=False):
    """Runs the decoding benchmark, prints its table, writes `runs/bench/decoding.json`.

    `tolerance` is accepted for the common interface and unused (the target
    here is a speed-up); `xla` adds the XLA-compiled rows.

    Returns:
        `(passed, clearly_slower)`: passed when caching is >= 3x faster than the
        decoder baseline at length 5 and the ratio grows with length;
        clearly_slower when caching is significantly slower anywhere.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_vit.models.decoder_steps import decoder_steps

    del tolerance
    keras.utils.set_random_seed(0)
    lengths = QUICK_LENGTHS if quick else LENGTHS
    timing = dict(min_pairs=repeats or (3 if quick else 7), warmup=1 if quick else 2,
                  min_time=0.3 if quick else 2.0)
    print(f"\n== decoding: cached greedy_decode vs full-prefix recomputation\n   "
          f"image_to_sequence Ti/4 {IMAGE_SHAPE}, {MODEL}, batch {BATCH}, float32;\n   "
          "ratio = recompute s / cached s (> 1: caching faster)")
    model = build_model()
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH,) + IMAGE_SHAPE),
                         tf.float32)
    end_id = unused_token(model, images, max(lengths))
    encode = tf.function(lambda x: decoder_steps(model).encode(x)[0])
    rows, records, ratios = [], [], {}
    compilers = ("graph", "xla") if xla else ("graph",)
    with common.Stopwatch() as total:
        for compiler, length in itertools.product(compilers, lengths):
            cached, by_decoder, by_model = decoders(model, length, end_id, compiler == "xla")
            np.testing.assert_array_equal(cached(images).numpy(), by_decoder(images).numpy())
            peers = (("decoder", by_decoder),) + ((("model", by_model),)
                                                   if compiler == "graph" else ())
            for peer_name, peer in peers:
                result = common.compare(lambda f=cached: f(images), lambda f=peer: f(images),
                                        **timing)
                encoder_s = _median_seconds(lambda: encode(images))
                # Timed apart from the pairs, so noisy: only meaningful when the encoder
                # is clearly below the cached total.
                decoder_only = ((result.peer_s - encoder_s) / (result.ours_s - encoder_s)
                                if encoder_s < 0.8 * result.ours_s else float("nan"))
                ratios[(compiler, peer_name, length)] = result
                records.append(dict(compiler=compiler, length=length, peer=peer_name,
                                    encoder_s=encoder_s, decoder_only_ratio=decoder_only,
                                    **result.to_dict()))
                rows.append([compiler, length, peer_name, f"{result.ours_s * 1e3:.1f}",
                             f"{result.peer_s * 1e3:.1f}", f"{encoder_s * 1e3:.1f}",
                             common.ratio_cell(result), f"{decoder_only:.2f}",
                             f"{result.cpu_ratio:.2f}"])
                print("   " + " | ".join(str(c) for c in rows[-1]), flush=True)
    decoder_ratios = [ratios[("graph", "decoder", n)].ratio for n in lengths]
    passed = decoder_ratios[0] >= TARGET_RATIO_AT_5 and all(
        later >= earlier for earlier, later in zip(decoder_ratios, decoder_ratios[1:]))
    clearly_slower = any(r.ratio < 1 and r.p_slower < common.SIGNIFICANCE
                         for r in ratios.values())
    verdict = (f"{'PASS' if passed else 'MISS'}: cached vs decoder recomputation "
               + ", ".join(f"{r:.1f}x at {n}" for n, r in zip(lengths, decoder_ratios))
               + f" (target >= {TARGET_RATIO_AT_5:.0f}x at 5, growing with length)")
    print(common.format_table(["compile", "length", "recompute", "cached ms", "recompute ms",
                               "encoder ms", "recompute/cached", "decoder-only", "cpu ratio"],
                              rows))
    print(f"verdict: {verdict}\n({common.load_note()}; {total.seconds:.0f} s)")
    path = common.write_results("decoding", dict(
        quick=quick, passed=passed, clearly_slower=clearly_slower, verdict=verdict,
        config=dict(image_shape=IMAGE_SHAPE, vocab=VOCAB, batch=BATCH, timing=timing, **MODEL),
        results=records, seconds=total.seconds))
    print(f"results: {path.relative_to(common.REPO_ROOT)}")
    return passed, clearly_slower


if __name__ == "__main__":
    import sys

    sys.exit(0 if run(quick="--quick" in sys.argv, xla="--xla" in sys.argv)[0] else 1)
