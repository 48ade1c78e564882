"""`keras_vit.layers.MultiHeadAttention` against `keras.layers.MultiHeadAttention`.

Same configuration and the same weights (`ours.set_weights(peer.get_weights())`),
self-attention on `(batch, length, width)` inputs. For each precision
(float32, mixed_bfloat16), sequence length and mode it times:

- forward: `layer(x, x)` inside a `tf.function`;
- fwd+bwd: a `tf.GradientTape` in a `tf.function` taking the gradient of
  `mean(out ** 2)` w.r.t. the input and every trainable weight;

once as a plain graph (`jit_compile=False`) and once under XLA
(`jit_compile=True`). Reported ratio: keras ms / ours ms (> 1: ours faster).
"""


from benchmarks import common

NUM_HEADS = 8
KEY_DIM = 64
WIDTH = 512
MAX_BATCH = 8
TOKENS_PER_BATCH = 1024  # batch = min(MAX_BATCH, TOKENS_PER_BATCH // length): long ones stay fast
SEQUENCE_LENGTHS = (64, 128, 256, 512, 1024)
QUICK_SEQUENCE_LENGTHS = (64, 256)
PRECISIONS = ("float32", "mixed_bfloat16")
MODES = ("forward", "fwd+bwd")


def batch_for(length):
    return max(1, min(MAX_BATCH, TOKENS_PER_BATCH // length))


def _make_layers(policy, x):
    import keras

    from keras_vit.layers import MultiHeadAttention

    peer = keras.layers.MultiHeadAttention(num_heads=NUM_HEADS, key_dim=KEY_DIM, dtype=policy,
                                           name="keras_mha")
    ours = MultiHeadAttention(num_heads=NUM_HEADS, key_dim=KEY_DIM, dtype=policy,
                              name="ours_mha")
    peer_out = peer(x, x)
    ours(x, x)
    ours.set_weights(peer.get_weights())
    ours_out = ours(x, x)
    diff = float(keras.ops.max(keras.ops.abs(keras.ops.cast(ours_out, "float32")
                                             - keras.ops.cast(peer_out, "float32"))))
    return ours, peer, diff


def _make_step(layer, mode, jit_compile):
    """A zero-argument callable running one forward or forward+backward of `layer`."""
    import tensorflow as tf

    if mode == "forward":
        @tf.function(jit_compile=jit_compile)
        def step(x):
            return layer(x, x, training=False)
    else:
        @tf.function(jit_compile=jit_compile)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = layer(x, x, training=True)
                loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32)))
            return tape.gradient(loss, [x] + list(layer.trainable_variables))
    return step


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the attention benchmark, prints its table, writes `runs/bench/attention.json`.

    Returns:
        `(passed, clearly_slower)`, see `common.verdict`.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    lengths = QUICK_SEQUENCE_LENGTHS if quick else SEQUENCE_LENGTHS
    timing = dict(min_pairs=repeats or (5 if quick else 9), warmup=1 if quick else 2,
                  min_time=0.25 if quick else 1.0)
    compilers = ("graph", "xla") if xla else ("graph",)
    print(f"\n== attention: keras_vit.layers.MultiHeadAttention vs keras.layers.MultiHeadAttention"
          f"\n   self-attention, num_heads={NUM_HEADS}, key_dim={KEY_DIM}, width={WIDTH}; "
          f">= {timing['min_pairs']} interleaved call pairs and >= {timing['min_time']} s a side, medians;"
          f"\n   ratio = keras ms / ours ms (> 1: ours faster)")
    rows, records, results = [], [], []
    with common.Stopwatch() as total:
        for policy in PRECISIONS:
            for length in lengths:
                batch = batch_for(length)
                rng = np.random.default_rng(length)
                x = tf.constant(rng.standard_normal((batch, length, WIDTH)).astype("float32"))
                ours, peer, diff = _make_layers(policy, x)
                for mode in MODES:
                    record = dict(precision=policy, mode=mode, length=length, batch=batch,
                                  max_abs_output_diff=diff)
                    row = [policy, mode, length, batch]
                    for compiler in compilers:
                        jit = compiler == "xla"
                        try:
                            ours_step = _make_step(ours, mode, jit)
                            peer_step = _make_step(peer, mode, jit)
                            result = common.compare(lambda: ours_step(x), lambda: peer_step(x),
                                                    **timing)
                        except Exception as error:  # XLA may reject an op: report, go on
                            record[compiler] = {"error": f"{type(error).__name__}: {error}"[:500]}
                            row += ["n/a"] * 4
                            continue
                        record[compiler] = result.to_dict()
                        results.append(result)
                        row += [f"{result.ours_s * 1e3:.2f}", f"{result.peer_s * 1e3:.2f}",
                                common.ratio_cell(result), f"{result.cpu_ratio:.3f}"]
                    row.append(f"{diff:.1e}")
                    rows.append(row)
                    records.append(record)
                    print("   " + " | ".join(str(c) for c in row), flush=True)
                del ours, peer
                keras.backend.clear_session()
    headers = ["precision", "mode", "seq", "batch"]
    for compiler in compilers:
        tag = "" if compiler == "graph" else "xla "
        headers += [f"{tag}ours ms", f"{tag}keras ms", f"{tag}keras/ours", f"{tag}cpu k/o"]
    headers.append("max|diff|")
    passed, clearly_slower, text = common.verdict(results, tolerance, what="keras/ours ratio")
    print()
    print(common.format_table(headers, rows))
    print(f"verdict: {text}")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("attention", dict(
        quick=quick, tolerance=tolerance, passed=passed, clearly_slower=clearly_slower,
        verdict=text,
        config=dict(num_heads=NUM_HEADS, key_dim=KEY_DIM, width=WIDTH, timing=timing,
                    batch_rule=f"min({MAX_BATCH}, {TOKENS_PER_BATCH} // length)"),
        results=records, seconds=total.seconds))
    return passed, clearly_slower
