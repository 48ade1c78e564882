"""Peak resident memory of a ViT-Ti/16 batch-32 training step: ours against keras-hub's.

Each measurement is a fresh process (`benchmarks.memory_worker`) that imports
TensorFlow and Keras, builds one side's model (`benchmarks.vit_models`),
compiles it, and runs 3 training steps; the process's peak resident set
(`ru_maxrss`) is that side's figure. Runs alternate ours, keras-hub,
keras-hub, ours (ABBA), `--repeats` pairs (default 1, full: 2), for each
precision (float32, and mixed_bfloat16 where the CPU has native bf16) and
compiler (graph, XLA). Ratio = keras-hub peak / ours peak (>= 1: ours uses no
more; issue 13's target). Also reported: the peak above the memory held right
after building (the steps' own working set: activations, gradients, optimizer
slots, compiled code).
"""

import statistics

from benchmarks import common
from benchmarks.vit_models import QUICK_DEPTH, SIDES, TI16

STEPS = 3


def measure_in_subprocess(side, policy, depth, batch, compiler, steps=STEPS):
    """One `memory_worker` run; returns its JSON record."""
    return common.run_worker("benchmarks.memory_worker",
                             [side, policy, depth, batch, compiler, steps])


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the memory benchmark, prints its table, writes `runs/bench/memory.json`.

    Returns:
        `(passed, False)`: passed when ours never peaks above keras-hub by more
        than the tolerance (memory is not noisy enough for a sign test).
    """
    depth = QUICK_DEPTH if quick else TI16["num_layers"]
    batch = 8 if quick else 32
    pairs = repeats or (1 if quick else 2)
    compilers = ("graph", "xla") if xla else ("graph",)
    print(f"\n== memory: peak RSS of a training step, ViT-Ti/16 {depth} blocks, batch {batch}, "
          f"one process per run, {pairs} ABBA pair(s); ratio = keras-hub / ours (>= 1: ours no "
          f"more)")
    rows, records, passed = [], [], True
    with common.Stopwatch() as total:
        for policy in common.precisions_for_this_cpu():
            for compiler in compilers:
                runs = {side: [] for side in SIDES}
                for index in range(pairs):
                    order = SIDES if index % 2 == 0 else SIDES[::-1]
                    for side in order:
                        runs[side].append(measure_in_subprocess(side, policy, depth, batch,
                                                                compiler))
                peak = {side: statistics.median(r["peak_mib"] for r in runs[side])
                        for side in SIDES}
                step = {side: statistics.median(r["step_peak_above_build_mib"]
                                                for r in runs[side]) for side in SIDES}
                ratio = peak["keras_hub"] / peak["ours"]
                passed = passed and ratio >= 1 - tolerance
                rows.append([policy, compiler, f"{peak['ours']:.0f}", f"{peak['keras_hub']:.0f}",
                             f"{ratio:.3f}", f"{step['ours']:.0f}", f"{step['keras_hub']:.0f}",
                             "yes" if ratio >= 1 else "no"])
                print("   " + " | ".join(map(str, rows[-1])), flush=True)
                records.append(dict(precision=policy, compiler=compiler, peak_mib=peak,
                                    step_peak_above_build_mib=step, ratio=ratio, runs=runs))
    print()
    print(common.format_table(["precision", "compile", "ours peak MiB", "keras-hub peak MiB",
                               "k/o", "ours step MiB", "keras-hub step MiB", "ours <= k"], rows))
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("memory", dict(
        quick=quick, tolerance=tolerance, passed=passed,
        config=dict(depth=depth, batch=batch, pairs=pairs, steps=STEPS, compilers=compilers),
        results=records, seconds=total.seconds))
    return passed, False
