"""Exported SavedModels: ours against keras-hub's `model.export()`, in a fresh TF-only process.

For each precision (float32, and mixed_bfloat16 where the CPU has native
bf16) this process builds our ViT-Ti/16 and keras-hub's (`benchmarks.vit_models`)
and exports them:

- ours with `pipelines.serving.signatures.write_saved_model` (the export the
  training job ships: `serving_default` takes float32 `images`, checks them,
  runs the model, returns probabilities and top-5);
- keras-hub's with `model.export(path, format="tf_saved_model")` (its
  `serving_default` returns the logits).

A fresh process (`benchmarks.serving_worker`, TensorFlow only) loads both with
`tf.saved_model.load` and interleaves calls of the two `serving_default`
signatures: throughput at batch 32 (images/s) and latency at batch 1 (p50 and
p99 ms). Ratios: ours images/s / keras-hub images/s and keras-hub p50 / ours
p50 (> 1: ours faster; issue 13's target >= 1.25). Ours does slightly more per
request (input checks, softmax, top-k) than keras-hub's logits-only signature.
"""

import os
import statistics
import tempfile

from benchmarks import common
from benchmarks.vit_models import QUICK_DEPTH, TI16

TARGET = 1.25


def export_pair(policy, depth, directory):
    """Exports ours and keras-hub's model built under `policy`; returns their folders."""
    import keras

    from benchmarks import vit_models
    from pipelines.serving.signatures import write_metadata, write_saved_model

    ours, peer = vit_models.build_pair(policy, depth)
    ours_dir, peer_dir = os.path.join(directory, "ours"), os.path.join(directory, "keras_hub")
    write_saved_model(ours, ours_dir)
    write_metadata(ours_dir, model_name="vit_bench", model=ours, class_names=None, top_k=5)
    peer.export(peer_dir, format="tf_saved_model", verbose=False)
    del ours, peer
    keras.backend.clear_session()
    return ours_dir, peer_dir


def time_in_fresh_process(ours_dir, peer_dir, batch, rounds, min_time):
    """Runs `benchmarks.serving_worker` on both exports; returns its JSON record."""
    return common.run_worker("benchmarks.serving_worker",
                             [ours_dir, peer_dir, "--batch", batch, "--rounds", rounds,
                              "--min-time", min_time])


def summarize(record, batch):
    """Throughput and latency figures (and their paired ratios) from a worker record."""
    throughput = {side: t for side, t in record["timings"]["throughput"].items()}
    latency = {side: t for side, t in record["timings"]["latency"].items()}
    rate = common.paired_comparison(throughput["ours"], throughput["keras_hub"])
    speed = common.paired_comparison(latency["ours"], latency["keras_hub"])
    summary = {"throughput_ratio": rate.to_dict(), "latency_ratio": speed.to_dict()}
    for side in ("ours", "keras_hub"):
        summary[side] = dict(
            images_per_s=batch / statistics.median(throughput[side]["wall"]),
            p50_ms=common.percentile(latency[side]["wall"], 50) * 1e3,
            p99_ms=common.percentile(latency[side]["wall"], 99) * 1e3,
            latency_calls=len(latency[side]["wall"]))
    return summary, rate, speed


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the serving benchmark, prints its table, writes `runs/bench/serving.json`.

    Returns:
        `(passed, clearly_slower)`, see `common.verdict` (over both ratios).
    """
    depth = QUICK_DEPTH if quick else TI16["num_layers"]
    batch = 8 if quick else 32
    rounds = repeats or (20 if quick else 200)  # p99 needs a few hundred latency calls
    min_time = 0.5 if quick else 5.0
    print(f"\n== serving: our SavedModel (write_saved_model) vs keras-hub model.export(), "
          f"ViT-Ti/16 {depth} blocks, loaded in a fresh TF-only process\n   throughput at batch "
          f"{batch}, latency at batch 1 (>= {rounds} interleaved calls); target >= {TARGET}")
    rows, records, results = [], [], []
    with common.Stopwatch() as total:
        for policy in common.precisions_for_this_cpu():
            with tempfile.TemporaryDirectory() as directory:
                ours_dir, peer_dir = export_pair(policy, depth, directory)
                record = time_in_fresh_process(ours_dir, peer_dir, batch, rounds, min_time)
            summary, rate, speed = summarize(record, batch)
            results += [rate, speed]
            ours, peer = summary["ours"], summary["keras_hub"]
            rows.append([policy, f"{ours['images_per_s']:.1f}", f"{peer['images_per_s']:.1f}",
                         common.ratio_cell(rate), f"{ours['p50_ms']:.1f} / {ours['p99_ms']:.1f}",
                         f"{peer['p50_ms']:.1f} / {peer['p99_ms']:.1f}",
                         common.ratio_cell(speed),
                         "yes" if min(rate.ratio, speed.ratio) >= TARGET else "no"])
            print("   " + " | ".join(map(str, rows[-1])), flush=True)
            records.append(dict(precision=policy, summary=summary,
                                modules_imported_in_worker=record["modules_imported"],
                                inputs=record["inputs"], output_dtypes=record["output_dtypes"],
                                timings=record["timings"]))
    passed, clearly_slower, text = common.verdict(results, tolerance, what="ours/keras-hub ratio")
    print()
    print(common.format_table(["precision", f"ours img/s (b{batch})", "keras-hub img/s",
                               "throughput o/k", "ours p50/p99 ms (b1)",
                               "keras-hub p50/p99 ms", "latency k/o", f">={TARGET}"], rows))
    print(f"verdict: {text}")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("serving", dict(
        quick=quick, tolerance=tolerance, target=TARGET, passed=passed,
        clearly_slower=clearly_slower, verdict=text,
        config=dict(depth=depth, batch=batch, rounds=rounds, min_time=min_time),
        results=records, seconds=total.seconds))
    return passed, clearly_slower
