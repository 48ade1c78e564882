"""`keras-vit` command line: a thin dispatcher over the job modules.

Each job lives in its own module under `pipelines/` and exposes `main(argv) -> int`
with its own argparse parser, so `keras-vit train ...` and `python -m pipelines.train ...`
behave the same.

Example:
    keras-vit train --epochs 1
    keras-vit export --help
"""

import importlib
import sys

JOBS = {
    "train": ("pipelines.train", "train a Vision Transformer (default: the embedded digits set)"),
    "tune": ("pipelines.tune", "search hyperparameters with keras-tuner"),
    "export": ("pipelines.export", "export a trained model as a TF Serving SavedModel"),
    "predict": ("pipelines.predict", "classify image files locally or through TF Serving"),
    "convert": ("pipelines.convert", "convert a ViT checkpoint (npz, HF, timm, keras-hub) to .keras"),
    "prepare": ("pipelines.prepare", "write a dataset as sharded TFRecords for many workers"),
    "data-service": ("pipelines.data_service", "run a tf.data service dispatcher or worker"),
}


def _usage():
    lines = ["usage: keras-vit {{{}}} [options]".format(",".join(JOBS)), "", "jobs:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in JOBS.items()]
    lines += ["", "Run `keras-vit JOB --help` for the options of a job."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"keras-vit: unknown job {job!r}; expected one of {sorted(JOBS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[job][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
