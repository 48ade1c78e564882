"""The `keras-vit train` command line: parser and `main`.

Example:
    keras-vit train --dataset cifar10 --data-dir ~/tfds --offline --epochs 30
"""

import argparse
import textwrap

from pipelines.cli_args import (
    HelpFormatter,
    add_data_arguments,
    add_export_arguments,
    add_runtime_arguments,
    run_training_job,
)
from pipelines.options import DEFAULT_DATASET, POOLINGS, POSITION_EMBEDDINGS, STRATEGIES
from pipelines.sequence.cli import add_task_argument, requested_task
from pipelines.sequence.cli import main as sequence_main
from pipelines.training.config import FIT_ON, PRESETS, TrainConfig


def _description():
    presets = ("Train a Vision Transformer. Options left unset take the dataset's preset "
               "(digits: " + ", ".join(f"{k}={v}" for k, v in PRESETS["digits"].items())
               + "; other data: scaled to the image size, channels and number of training "
               "images -- a patch grid of at least 4x4, width and depth growing with the "
               "data, epochs fitting a ~200-s planned fit on 2 CPU cores, affine augmentation "
               "and shift averaging for images up to 64 pixels; the job prints its choice).")
    return textwrap.fill(presets, width=79)


def _add_model_arguments(parser):
    model = parser.add_argument_group("model")
    model.add_argument("--init", metavar="CHECKPOINT",
                       help="fine-tune a published ViT checkpoint (Google .npz, Hugging Face "
                            "or timm folder, timm .safetensors, keras-hub preset folder; local "
                            "files only): the architecture and input normalisation come from "
                            "it (the options below but --num-heads and the dropouts do not "
                            "apply), a new class count gets a zero-initialised head, "
                            "--image-size defaults to the checkpoint's (see "
                            "docs/checkpoints.md)")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="with --init: train only the head (linear probe)")
    model.add_argument("--variant", help="ViT size and patch, e.g. Ti/16, S/16, B/16, L/16, H/14")
    model.add_argument("--patch-size", type=int, help="override the variant's patch size")
    model.add_argument("--hidden-dim", type=int, help="override the width")
    model.add_argument("--depth", type=int, help="override the number of encoder blocks")
    model.add_argument("--num-heads", type=int,
                       help="override the attention heads (with --init: checked against the "
                            "checkpoint; needed for a timm state dict without config.json)")
    model.add_argument("--mlp-dim", type=int, help="override the MLP width")
    model.add_argument("--pooling", choices=POOLINGS, help="class token or average pooling")
    model.add_argument("--position-embedding", choices=POSITION_EMBEDDINGS,
                       help="learned (default) or fixed 2-D sin-cos position embedding")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout rate")
    model.add_argument("--attention-dropout", type=float, default=0.0,
                       help="dropout on attention weights")
    model.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate")


def _add_optimisation_arguments(parser):
    defaults = TrainConfig()
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="training epochs")
    optim.add_argument("--fit-on", choices=FIT_ON,
                       help="train: fit on the training split, score the validation split "
                            "after each epoch and keep the best epoch; train+validation: fit "
                            "the final model on both (no validation, the last epoch is kept; "
                            "the SVC baseline fits on both too); default: the preset's")
    optim.add_argument("--batch-size", type=int, help="batch size")
    optim.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                       help="AdamW weight decay")
    optim.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction,
                       help="fraction of steps of linear warm-up before cosine decay")
    optim.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                       help="label smoothing")
    optim.add_argument("--clipnorm", type=float, default=defaults.clipnorm,
                       help="gradient clipping norm")
    add_runtime_arguments(optim)
    optim.add_argument("--distribute", default="none", choices=STRATEGIES,
                       help="tf.distribute strategy: one device, all local GPUs (or the CPU), "
                            "or the workers in TF_CONFIG; the batch size is the global one")
    from pipelines.training.distributed_cli import add_distributed_arguments

    add_distributed_arguments(optim)


def build_parser():
    """The `keras-vit train` argument parser; every option documented in `--help`."""
    from pipelines.data import describe_sources

    parser = argparse.ArgumentParser(prog="keras-vit train", formatter_class=HelpFormatter,
                                     description=_description(), epilog=describe_sources())
    data = add_data_arguments(parser, DEFAULT_DATASET)
    data.add_argument("--tta-shift", type=int,
                      help="evaluate and export the mean prediction over all shifts of up to N "
                           "pixels (test-time augmentation; 0: off)")
    _add_model_arguments(parser)
    _add_optimisation_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="run folder (default runs/<dataset>); rerunning with "
                                          "the folder of a killed run resumes it")
    out.add_argument("--overwrite", action="store_true",
                     help="the run folder holds a finished run: move it aside to "
                          "<folder>.old-<time> and start a new run there")
    out.add_argument("--restart", action="store_true",
                     help="the run folder holds a killed run: move it aside to "
                          "<folder>.old-<time> and start over instead of resuming")
    add_export_arguments(out, "vit_<dataset>")
    out.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="measure scikit-learn's SVC on the same split")
    out.add_argument("--debug", action="store_true",
                     help="print the traceback of an error, not just its one-line message")
    add_task_argument(parser)
    return parser


def main(argv=None):
    """Entry point of `keras-vit train` and `python -m pipelines.train`; returns the exit code.

    A user error (bad option, unusable folder, refused run folder) prints one
    line `keras-vit train: error: ...` and returns 2, with its traceback only
    under `--debug`.
    """
    if requested_task(argv) == "sequence":  # its own options: pipelines.sequence.cli
        return sequence_main(argv)
    args = build_parser().parse_args(argv)
    from pipelines.training.job import train

    return run_training_job(train, TrainConfig(**vars(args)), args.debug)
