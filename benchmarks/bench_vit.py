"""ViT-Ti/16 at 224x224, 1000 classes: `keras_vit` against keras-hub's ViT, each at its fastest.

Models: `benchmarks.vit_models` (same architecture and parameter count, built
under the same global dtype policy, compiled alike: AdamW, sparse categorical
cross-entropy from logits, no metrics).

For each precision (float32, and mixed_bfloat16 where the CPU has native bf16)
and task it builds four models, ours and keras-hub's, each compiled as a plain
graph (`jit_compile=False`) and under XLA (`jit_compile=True`), and times all
four in the same interleaved rounds (one call of each per round, the order
rotating). Each side's fastest configuration is the one with the higher median
images/s in those rounds; the reported ratio is ours/keras-hub of the two
fastest, paired round by round. Tasks:

- train: images/s of `model.train_on_batch(images, labels)`, batch 32;
- infer: images/s of `model.predict_on_batch(images)`, batch 32;
- infer1: the same at batch 1 (latency-bound serving case).

Ratio: ours images/s / keras-hub images/s (>= 1: ours at least as fast;
issue 13's target is >= 1.25).
"""

from benchmarks import common
from benchmarks.vit_models import IMAGE_SHAPE, NUM_CLASSES, QUICK_DEPTH, SIDES, TI16

TARGET = 1.25  # issue 13: ours >= 1.25x keras-hub in each side's fastest configuration


def tasks_for(batch):
    """`{task: (batch size, step(model, images, labels))}` of the benchmark."""
    return {
        "train": (batch, lambda model, x, y: model.train_on_batch(x, y)),
        "infer": (batch, lambda model, x, y: model.predict_on_batch(x)),
        "infer1": (1, lambda model, x, y: model.predict_on_batch(x)),
    }


def _models(policy, depth, compilers):
    """`{(side, compiler): compiled model}` under the global dtype `policy`."""
    from benchmarks import vit_models

    return {(side, compiler): vit_models.compile_for_benchmark(
                vit_models.build(side, policy, depth), compiler == "xla")
            for side in SIDES for compiler in compilers}


def fastest(timings, side, compilers):
    """The compiler of `side` with the least median seconds per call in `timings`."""
    import statistics

    return min(compilers, key=lambda c: statistics.median(timings[f"{side} {c}"]["wall"]))


def measure_task(models, step, images, labels, compilers, timing):
    """Interleaves every (side, compiler); returns `(timings, best compilers, Comparison)`."""
    calls = {f"{side} {compiler}": (lambda m=model: step(m, images, labels))
             for (side, compiler), model in models.items()}
    timings = common.interleave(calls, min_rounds=timing["min_pairs"],
                                min_time=timing["min_time"], warmup=timing["warmup"])
    best = {side: fastest(timings, side, compilers) for side in SIDES}
    result = common.paired_comparison(timings[f"ours {best['ours']}"],
                                      timings[f"keras_hub {best['keras_hub']}"])
    return timings, best, result


def _row(policy, task, batch, timings, best, result, compilers):
    import statistics

    def rate(side, compiler):
        return batch / statistics.median(timings[f"{side} {compiler}"]["wall"])

    short = {"ours": "ours", "keras_hub": "hub"}
    configs = " ".join(f"{short[side]}:{c}={rate(side, c):.1f}" for side in SIDES
                       for c in compilers)
    return [policy, task, batch, f"{best['ours']} / {best['keras_hub']}",
            f"{batch / result.ours_s:.1f}", f"{batch / result.peer_s:.1f}",
            common.ratio_cell(result), f"{result.cpu_ratio:.3f}",
            "yes" if result.ratio >= TARGET else "no", configs]


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the ViT benchmark, prints its table, writes `runs/bench/vit.json`.

    Args:
        quick: smoke mode: 2 blocks, batch 8, fewer rounds.
        repeats: least number of interleaved rounds per task.
        tolerance: see `common.verdict`.
        xla: also build XLA-compiled models (else each side runs as a graph only).

    Returns:
        `(passed, clearly_slower)`, see `common.verdict`.
    """
    import keras

    from benchmarks.vit_models import random_batch

    batch = 8 if quick else 32
    depth = QUICK_DEPTH if quick else TI16["num_layers"]
    timing = dict(min_pairs=repeats or (3 if quick else 7), warmup=1 if quick else 2,
                  min_time=0.5 if quick else 4.0)
    compilers = ("graph", "xla") if xla else ("graph",)
    precisions = common.precisions_for_this_cpu()
    print(f"\n== vit: keras_vit vision_transformer('Ti/16') vs keras_hub ViTImageClassifier"
          f"\n   {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, {NUM_CLASSES} classes, {depth} blocks"
          f"{' (quick: fewer than Ti/16 has)' if quick else ''}; each side as "
          f"{' and '.join(compilers)}, all interleaved; >= {timing['min_pairs']} rounds;"
          f"\n   ratio = ours images/s / keras-hub images/s, each side in its fastest "
          f"configuration (target >= {TARGET}); {common.cpu_note()}")
    rows, records, results, params = [], [], [], {}
    with common.Stopwatch() as total:
        for policy in precisions:
            with common.Stopwatch() as build:
                models = _models(policy, depth, compilers)
            params[policy] = {side: models[(side, "graph")].count_params() for side in SIDES}
            for task, (task_batch, step) in tasks_for(batch).items():
                images, labels = random_batch(task_batch)
                record = dict(precision=policy, task=task, batch=task_batch)
                try:
                    timings, best, result = measure_task(models, step, images, labels,
                                                         compilers, timing)
                except Exception as error:  # noqa: BLE001  (XLA may reject an op: report, go on)
                    record["error"] = f"{type(error).__name__}: {error}"[:500]
                    rows.append([policy, task, task_batch] + ["n/a"] * 7)
                    records.append(record)
                    continue
                record.update(result.to_dict(), fastest=best, timings=timings,
                              ours_images_per_s=task_batch / result.ours_s,
                              keras_hub_images_per_s=task_batch / result.peer_s,
                              meets_target=result.ratio >= TARGET)
                results.append(result)
                rows.append(_row(policy, task, task_batch, timings, best, result, compilers))
                records.append(record)
                print("   " + " | ".join(str(c) for c in rows[-1])
                      + f"   (build+compile {build.seconds:.0f} s)", flush=True)
            del models
            keras.backend.clear_session()
    headers = ["precision", "task", "batch", "fastest o/k", "ours img/s", "keras-hub img/s",
               "ours/keras-hub", "cpu o/k", f">={TARGET}", "every configuration img/s"]
    passed, clearly_slower, text = common.verdict(results, tolerance,
                                                  what="ours/keras-hub ratio")
    print()
    for policy, counts in params.items():
        print(f"parameters ({policy}): ours {counts['ours']:,}, "
              f"keras-hub {counts['keras_hub']:,}")
    print(common.format_table(headers, rows))
    print(f"verdict: {text}")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("vit", dict(
        quick=quick, tolerance=tolerance, target=TARGET, passed=passed,
        clearly_slower=clearly_slower, verdict=text,
        config=dict(image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, batch=batch, timing=timing,
                    compilers=compilers, **dict(TI16, num_layers=depth)),
        parameters=params, results=records, seconds=total.seconds))
    return passed, clearly_slower
