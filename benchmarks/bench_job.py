"""The default training job's phases: where `keras-vit train`'s wall time goes.

Runs `keras-vit train --epochs 3 --no-export --no-baseline --verbose 0` (the
digits defaults otherwise; `--quick`: 2 epochs) in a subprocess through
`benchmarks.train_probe`, which adds a step-timing callback, for
`--precision float32` and (where the CPU has native bf16) `mixed_bfloat16`,
each with XLA on and off (`--quick`: float32 with the `--xla` setting
only), and reports from the probe and the job's `metrics.json`:

- imports (TensorFlow, Keras, the job), data (`phase_seconds["data"]`),
  fit, evaluate, artifacts, wall;
- first epoch (`epoch_seconds[0]`), and in it the first training step
  (tracing + XLA compilation) and validation (its own compilations);
- each later epoch, split into: time before its first step (iterator set-up
  and callbacks), its first step, the median of the other steps, validation;
- stalls: where the main thread was while an epoch's first step was awaited
  (the "second compile" of issue 13);
- the precision check: each (precision, XLA) configuration's steady step
  (the median training step after epoch 1), and whether the precision
  `--precision auto` picks for each XLA setting (`pipelines.precision`) is
  the faster one there.

No peer: the figures are the job's own (issue 13's targets: wall <= 180 s for
the full default job on 2 cores).
"""

import json
import os
import statistics
import sys
import tempfile

from benchmarks import common


def run_probed_job(precision, epochs, directory, extra_args=()):
    """Runs the probed training job; returns `(probe record, metrics.json, wall seconds)`."""
    name = "_".join([precision, *(arg.strip("-") for arg in extra_args)])
    out = os.path.join(directory, f"probe_{name}.json")
    run_dir = os.path.join(directory, f"run_{name}")
    command = [sys.executable, "-m", "benchmarks.train_probe", out, "--",
               "--epochs", str(epochs), "--no-export", "--no-baseline", "--verbose", "0",
               "--precision", precision, "--output-dir", run_dir, *extra_args]
    wall_seconds = common.run_job(command)
    with open(out) as handle:
        probe = json.load(handle)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    return probe, metrics, wall_seconds


def epoch_breakdown(probe):
    """Per epoch: seconds, before first step, first step, median later step, validation."""
    rows = []
    for epoch in probe["epochs"]:
        steps = epoch["train_step_seconds"]
        rows.append(dict(
            epoch=epoch["epoch"] + 1, seconds=epoch.get("seconds"),
            before_first_step=epoch["between_steps_seconds"][0] if steps else None,
            first_step=steps[0] if steps else None,
            median_later_step=statistics.median(steps[1:]) if len(steps) > 1 else None,
            steps=len(steps), validation=epoch.get("validation_seconds"),
            first_validation_step=(epoch["validation_step_seconds"] or [None])[0]))
    return rows


def steady_step_seconds(probe):
    """The median training step of the epochs after the first (None with one epoch)."""
    steps = [step for epoch in probe["epochs"] if epoch["epoch"] > 0
             for step in epoch["train_step_seconds"]]
    return statistics.median(steps) if steps else None


def precision_check(records, auto_choices):
    """For each XLA setting: the precision `auto` picks against the faster one measured.

    Args:
        records: dicts with `precision`, `xla` (bool) and `steady_step_seconds`.
        auto_choices: `{xla: precision}`, what `choose_precision("auto", xla=xla)` picks.

    Returns:
        One dict per XLA setting measured with more than one precision: `xla`,
        `auto`, `fastest`, and `auto_over_fastest` (auto's step / the fastest
        step: 1.0 when auto picks the faster one).

    Example:
    >>> precision_check([dict(precision="float32", xla=True, steady_step_seconds=0.03),
    ...                  dict(precision="mixed_bfloat16", xla=True, steady_step_seconds=0.04)],
    ...                 {True: "float32"})[0]["auto_over_fastest"]
    1.0
    """
    checks = []
    for xla in sorted({record["xla"] for record in records}, reverse=True):
        steps = {record["precision"]: record["steady_step_seconds"] for record in records
                 if record["xla"] == xla and record["steady_step_seconds"]}
        auto = auto_choices.get(xla)
        if len(steps) < 2 or auto not in steps:
            continue
        fastest = min(steps, key=steps.get)
        checks.append(dict(xla=xla, auto=auto, fastest=fastest,
                           auto_over_fastest=steps[auto] / steps[fastest]))
    return checks


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"


def _on_off(flag):
    return "on" if flag else "off"


def _print_job(precision, probe, metrics, wall):
    phases = metrics.get("phase_seconds", {})
    print(f"   {precision}: wall {wall:.0f} s (process); imports {probe['import_seconds']:.1f} s; "
          + "; ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
          + f"; epoch_seconds {metrics.get('epoch_seconds')}")
    print(common.format_table(
        ["epoch", "seconds", "before 1st step", "1st step", "median step", "steps",
         "validation", "1st val step"],
        [[r["epoch"], _fmt(r["seconds"]), _fmt(r["before_first_step"]), _fmt(r["first_step"]),
          _fmt(r["median_later_step"]), r["steps"], _fmt(r["validation"]),
          _fmt(r["first_validation_step"])] for r in epoch_breakdown(probe)]))
    gcs = probe.get("full_gc", [])
    if gcs:
        print(f"   full garbage collections over 50 ms: {len(gcs)}, {sum(g[1] for g in gcs):.1f} s "
              f"in all; longest {max(g[1] for g in gcs):.1f} s at {max(gcs, key=lambda g: g[1])[0]:.0f} s")
    for stall in probe.get("stalls", []):
        if stall["epoch"] > 0 and stall["seconds_sampled"] >= 1.0:
            _, stack = stall["stacks"][0]
            print(f"   epoch {stall['epoch'] + 1} {stall['phase']}: "
                  f"{stall['seconds_sampled']:.1f} s sampled; most often in: {stack[:300]}")


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Runs the job benchmark, prints its tables, writes `runs/bench/job.json`.

    Returns:
        `(True, False)`: the job's phases are reported, never judged here.
    """
    from pipelines.precision import choose_precision

    epochs = 2 if quick else 3
    precisions = ("float32",) if quick else common.precisions_for_this_cpu()
    settings = (xla,) if quick else (xla, not xla)
    print(f"\n== job: keras-vit train (digits defaults), {epochs} epochs, no export, no "
          f"baseline, per precision and XLA setting; {common.cpu_note()}")
    records = []
    with common.Stopwatch() as total, tempfile.TemporaryDirectory() as directory:
        for use_xla in settings:
            for precision in precisions:
                probe, metrics, wall = run_probed_job(precision, epochs, directory,
                                                      () if use_xla else ("--no-xla",))
                _print_job(f"{precision}, XLA {_on_off(use_xla)}", probe, metrics, wall)
                records.append(dict(precision=precision, xla=use_xla, process_wall_seconds=wall,
                                    import_seconds=probe["import_seconds"],
                                    phase_seconds=metrics.get("phase_seconds"),
                                    epoch_seconds=metrics.get("epoch_seconds"),
                                    steady_step_seconds=steady_step_seconds(probe),
                                    train_images_per_second=metrics.get(
                                        "train_images_per_second"),
                                    test_accuracy=metrics.get("test_accuracy"),
                                    epochs=epoch_breakdown(probe), probe=probe))
    auto_choices = {use_xla: choose_precision("auto", xla=use_xla)[0] for use_xla in settings}
    print(common.format_table(
        ["precision", "XLA", "epoch 1 s", "steady step ms", "auto picks it"],
        [[r["precision"], _on_off(r["xla"]), _fmt(r["epoch_seconds"][0]),
          "-" if r["steady_step_seconds"] is None else f"{1e3 * r['steady_step_seconds']:.1f}",
          "yes" if auto_choices[r["xla"]] == r["precision"] else ""] for r in records]))
    checks = precision_check(records, auto_choices)
    for check in checks:
        print(f"   XLA {_on_off(check['xla'])}: --precision auto picks "
              f"{check['auto']}; fastest step {check['fastest']}; auto/fastest step time "
              f"{check['auto_over_fastest']:.3f}"
              + ("" if check["auto"] == check["fastest"] else "  <- auto is not the fastest"))
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("job", dict(quick=quick, config=dict(epochs=epochs, xla=xla),
                                     auto_precision={str(k): v for k, v in auto_choices.items()},
                                     precision_check=checks,
                                     results=records, seconds=total.seconds))
    return True, False
