"""This machine's matmul peak, and how close a ViT-Ti/16 training step gets to it.

1. Peak: `tf.linalg.matmul` of two square matrices (in a `tf.function`), sizes
   512 to 4096, float32 and (where the CPU has native bf16) bfloat16; all sizes
   of a dtype interleaved round by round. GFLOP/s = 2 n^3 / median seconds;
   the peak is the best size's.
2. Share: our ViT-Ti/16 training step (batch 32, `train_on_batch`) as a graph
   and under XLA, interleaved round by round with the peak-size matmul of the
   same dtype (float32 steps against the float32 matmul, mixed_bfloat16 steps
   against the bfloat16 one). Achieved FLOP/s = analytic training FLOPs
   (`benchmarks.flops`: 3 x forward matmul FLOPs) x batch / step seconds;
   share = achieved / matmul FLOP/s of the same round, median over rounds.
3. Profile: where a float32 graph step's time goes (`benchmarks.step_profile`).
"""

from benchmarks import common, flops
from benchmarks.vit_models import IMAGE_SHAPE, NUM_CLASSES, QUICK_DEPTH, TI16

SIZES = (512, 1024, 2048, 4096)
QUICK_SIZES = (256, 512, 1024)
GOAL_SHARE = 0.70  # issue 13: the training step at >= 70 % of the matmul peak


def _matmul_call(size, dtype):
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(1, size), dtype=tf.float32)
    b = tf.random.stateless_normal((size, size), seed=(2, size), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    return lambda: matmul().numpy()  # .numpy(): wait for the result


def measure_peak(dtype, sizes, timing):
    """`{size: GFLOP/s}` (medians) for square matmuls of `dtype`, interleaved."""
    import statistics

    timings = common.interleave({size: _matmul_call(size, dtype) for size in sizes},
                                **timing)
    return {size: flops.square_matmul_flops(size) / statistics.median(t["wall"]) / 1e9
            for size, t in timings.items()}, timings


def training_flops_per_image(depth):
    """Analytic FLOPs of one training image of our ViT-Ti/16 with `depth` blocks.

    Counted as our model runs them: its last block computes the class token only.
    """
    return flops.vit_training_flops(IMAGE_SHAPE[0], IMAGE_SHAPE[1], IMAGE_SHAPE[2],
                                    TI16["patch_size"], TI16["hidden_dim"], depth,
                                    TI16["mlp_dim"], NUM_CLASSES, last_block_tokens=1)


def measure_share(policy, depth, batch, peak_size, dtype, timing, compilers):
    """Per compiler: achieved GFLOP/s of our train step and its share of the matmul, paired."""
    import statistics

    from benchmarks import vit_models

    images, labels = vit_models.random_batch(batch)
    calls = {"matmul": _matmul_call(peak_size, dtype)}
    for compiler in compilers:
        model = vit_models.compile_for_benchmark(vit_models.build("ours", policy, depth),
                                                 compiler == "xla")
        calls[compiler] = lambda m=model: m.train_on_batch(images, labels)
    timings = common.interleave(calls, **timing)
    step_flops = training_flops_per_image(depth) * batch
    matmul_flops = flops.square_matmul_flops(peak_size)
    result = {}
    for compiler in compilers:
        shares = [(step_flops / s) / (matmul_flops / m)
                  for s, m in zip(timings[compiler]["wall"], timings["matmul"]["wall"])]
        result[compiler] = dict(
            step_seconds=statistics.median(timings[compiler]["wall"]),
            achieved_gflops=step_flops / statistics.median(timings[compiler]["wall"]) / 1e9,
            matmul_gflops=matmul_flops / statistics.median(timings["matmul"]["wall"]) / 1e9,
            share=statistics.median(shares), share_samples=shares,
            first_call_seconds=timings[compiler]["first_s"])
    return result


def _profile(depth, batch):
    from benchmarks import step_profile, vit_models

    model = vit_models.compile_for_benchmark(vit_models.build("ours", "float32", depth), False)
    images, labels = vit_models.random_batch(batch)
    return step_profile.profile_training_step(model, images, labels, steps=3)


def _print_profile(profile):
    rows = [[name, f"{c['seconds_per_step'] * 1e3:.1f}", f"{c['share']:.1%}"]
            for name, c in profile["categories"].items()]
    print(common.format_table(["category", "op ms/step", "share of op time"], rows))
    print(f"   step wall {profile['wall_seconds_per_step'] * 1e3:.0f} ms, op time "
          f"{profile['op_seconds_per_step'] * 1e3:.0f} ms/step (parallelism "
          f"{profile['parallelism']:.2f}); {profile['steps']} profiled steps")


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the GEMM benchmark, prints its tables, writes `runs/bench/gemm.json`.

    Returns:
        `(True, False)`: a share below the goal is reported, never a failure.
    """
    import keras

    sizes = QUICK_SIZES if quick else SIZES
    depth = QUICK_DEPTH if quick else TI16["num_layers"]
    batch = 8 if quick else 32
    timing = dict(min_rounds=repeats or (3 if quick else 7), warmup=1 if quick else 2,
                  min_time=0.3 if quick else 3.0)
    compilers = ("graph", "xla") if xla else ("graph",)
    dtypes = {"float32": "float32"}
    if common.cpu_facts()["native_bf16"]:
        dtypes["mixed_bfloat16"] = "bfloat16"
    print(f"\n== gemm: tf.linalg.matmul peak (square {', '.join(map(str, sizes))}) and the "
          f"ViT-Ti/16 training step's share of it\n   {common.cpu_note()}")
    rows, records = [], []
    with common.Stopwatch() as total:
        for policy, dtype in dtypes.items():
            peaks, timings = measure_peak(dtype, sizes, timing)
            peak_size = max(peaks, key=peaks.get)
            print("   " + f"{dtype} matmul GFLOP/s: "
                  + ", ".join(f"{n}: {g:.1f}" for n, g in peaks.items()), flush=True)
            shares = measure_share(policy, depth, batch, peak_size, dtype, timing, compilers)
            keras.backend.clear_session()
            for compiler, share in shares.items():
                rows.append([policy, compiler, batch, f"{peaks[peak_size]:.1f} ({peak_size})",
                             f"{share['matmul_gflops']:.1f}", f"{share['achieved_gflops']:.1f}",
                             f"{share['share']:.1%}",
                             "yes" if share["share"] >= GOAL_SHARE else "no"])
                print("   " + " | ".join(map(str, rows[-1])), flush=True)
            records.append(dict(precision=policy, matmul_dtype=dtype, peak_gflops=peaks,
                                peak_size=peak_size, matmul_timings=timings, steps=shares))
        profile = _profile(depth, batch)
    print()
    print(common.format_table(["precision", "compile", "batch", "matmul peak GFLOP/s (n)",
                               "matmul same rounds", "step GFLOP/s", "share",
                               f">={GOAL_SHARE:.0%}"], rows))
    print(f"\nwhere a float32 graph training step's time goes (TF profiler, batch {batch}, "
          f"{depth} blocks):")
    _print_profile(profile)
    print(f"training FLOPs per image: {training_flops_per_image(depth) / 1e9:.2f} G "
          f"(3 x forward matmuls, {depth} blocks)")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("gemm", dict(
        quick=quick, goal_share=GOAL_SHARE,
        config=dict(sizes=sizes, depth=depth, batch=batch, timing=timing, compilers=compilers,
                    training_flops_per_image=training_flops_per_image(depth)),
        results=records, profile=profile, seconds=total.seconds))
    return True, False
