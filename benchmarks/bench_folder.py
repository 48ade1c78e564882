"""The data-scaled preset on a real image folder: wall time and accuracy against the SVC.

Writes the digit-scans benchmark folder (`benchmarks.digit_folder`: 28x28 grey
PNGs in train/ validation/ test/, 4,596 / 576 / 1,080 images drawn from the
digits scikit-learn ships) and runs, in a subprocess,

    keras-vit train --dataset FOLDER --no-export --verbose 0

with every model and schedule option left to the preset
(`pipelines.training.presets.scaled_preset`), then reports the process wall
time, the test accuracy (with the preset's shift averaging), the single-view
accuracy, the job's own `SVC()` baseline on the same split, and the options the
preset chose. No peer: issue 13's targets are the figures themselves:

- wall <= 600 s for the whole job on 2 cores (noisy on a shared machine:
  judged only with `--strict`);
- test accuracy >= SVC + 1.5 points (a miss fails the benchmark).

`--quick`: a folder of 10 images per class and split and 2 epochs, a smoke run of the
whole path; its figures are printed, never judged.
"""

import json
import os
import sys
import tempfile

from benchmarks import common
from benchmarks.digit_folder import write_digit_folder

WALL_TARGET_SECONDS = 600.0
MARGIN_OVER_SVC = 0.015
QUICK_FOLDER = dict(draws={"train": 1, "validation": 1, "test": 1}, limit=10)


def run_folder_job(folder, run_dir, extra_args=()):
    """Runs `keras-vit train` on `folder`; returns `(metrics.json, process wall seconds)`."""
    command = [sys.executable, "-m", "pipelines.cli", "train", "--dataset", str(folder),
               "--output-dir", str(run_dir), "--no-export", "--verbose", "0", *extra_args]
    wall_seconds = common.run_job(command)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        return json.load(handle), wall_seconds


def judge(metrics, wall_seconds):
    """`(accuracy_ok, wall_ok)` against issue 13's targets.

    Example:
        >>> judge({"test_accuracy": 0.96, "svc_test_accuracy": 0.936}, 550.0)
        (True, True)
    """
    svc = metrics.get("svc_test_accuracy")
    accuracy_ok = svc is not None and metrics["test_accuracy"] >= svc + MARGIN_OVER_SVC - 1e-9
    return accuracy_ok, wall_seconds <= WALL_TARGET_SECONDS


def _chosen(metrics):
    config = metrics.get("config", {})
    return {key: config.get(key) for key in ("variant", "hidden_dim", "depth", "num_heads",
                                              "mlp_dim", "epochs", "batch_size",
                                              "learning_rate", "augmentation", "tta_shift")}


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=True):
    """Writes the folder, runs the job, prints and records its figures (`runs/bench/folder.json`).

    Returns:
        `(passed, failed)`: both targets met; the accuracy target missed (full mode).
    """
    extra = (["--epochs", "2"] if quick else []) + ([] if xla else ["--no-xla"])
    print(f"\n== folder: keras-vit train on the digit-scans folder, preset options"
          f"{' (quick: 100 images per split, 2 epochs)' if quick else ''}; {common.cpu_note()}")
    with common.Stopwatch() as total, tempfile.TemporaryDirectory() as directory:
        folder = os.path.join(directory, "digit_scans")
        sizes = write_digit_folder(folder, **(QUICK_FOLDER if quick else {}))
        metrics, wall = run_folder_job(folder, os.path.join(directory, "run"), extra)
    accuracy_ok, wall_ok = judge(metrics, wall)
    svc = metrics.get("svc_test_accuracy")
    print(f"   folder: {sizes}; options: {_chosen(metrics)}")
    print(common.format_table(
        ["wall s", "fit s", "test accuracy", "single view", "SVC", "margin (points)",
         "train img/s", "verdict"],
        [[f"{wall:.0f}", f"{metrics['phase_seconds'].get('fit', 0):.0f}",
          f"{metrics['test_accuracy']:.4f}", f"{metrics['test_accuracy_single_view']:.4f}",
          "-" if svc is None else f"{svc:.4f}",
          "-" if svc is None else f"{100 * (metrics['test_accuracy'] - svc):+.2f}",
          f"{metrics['train_images_per_second']:.0f}",
          "not judged (quick)" if quick else
          f"accuracy {'PASS' if accuracy_ok else 'FAIL'}, wall {'PASS' if wall_ok else 'FAIL'}"]]))
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    common.write_results("folder", dict(
        quick=quick, folder_sizes=sizes, process_wall_seconds=wall, accuracy_ok=accuracy_ok,
        wall_ok=wall_ok, targets=dict(wall_seconds=WALL_TARGET_SECONDS,
                                      margin_over_svc=MARGIN_OVER_SVC),
        options=_chosen(metrics), metrics=metrics, seconds=total.seconds))
    if quick:
        return True, False
    return accuracy_ok and wall_ok, not accuracy_ok
