"""`keras-vit train --task sequence`: parser and `main` of the image-to-sequence job.

`keras-vit train` hands its arguments here when `--task sequence` is given
(`requested_task`); this parser accepts `--task` too, so the same command line
works either way.

Example:
    keras-vit train --task sequence --dataset digit_strings
    keras-vit train --task sequence --dataset /data/plates --image-size 32,96 --max-length 10
"""

import argparse
import sys
import textwrap

from pipelines.cli_args import HelpFormatter, add_export_arguments, image_size, run_training_job
from pipelines.options import (
    POSITION_EMBEDDINGS,
    PRECISIONS,
    SEQUENCE_AUGMENTATIONS,
    TASKS,  # noqa: E402  (defined once, for every CLI)
)
from pipelines.sequence.config import SEQUENCE_PRESET, STRIP_WIDTH, SequenceConfig
from pipelines.sequence.data import DEFAULT_SEQUENCE_DATASET, TRAIN_STRINGS
from pipelines.training.config import FIT_ON


def requested_task(argv):
    """The `--task` value in `argv` (default "classify"), without parsing anything else.

    Example:
    >>> requested_task(["--task", "sequence", "--epochs", "3"])
    'sequence'
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--task", default="classify")
    known, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.task


def patch_size(text):
    """`--patch-size` value: `SIZE` -> int, `HEIGHTxWIDTH` -> (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH; received {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def add_task_argument(parser):
    """`--task classify|sequence` (both job parsers list it)."""
    parser.add_argument("--task", choices=TASKS, default="classify",
                        help="classify: a label per image; sequence: read text from the image "
                             "(ViT encoder + Transformer decoder, see --task sequence --help)")


def _description():
    preset = ", ".join(f"{k}={v}" for k, v in SEQUENCE_PRESET.items())
    return textwrap.fill(
        "Train an image-to-sequence model (ViT encoder, Transformer decoder) that reads text "
        "from images, with teacher forcing and the shared recipe; report exact-sequence "
        "accuracy and character error rate (greedy and beam search) and export it for TF "
        f"Serving with beam search in the graph. Options left unset take the preset ({preset}).",
        width=79)


def _add_data_and_model(parser):
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_SEQUENCE_DATASET,
                      help="'digit_strings' (embedded, no network), 'digit_strings/small', a "
                           "tfds (Image, Text) dataset, or a folder with labels.csv "
                           "(filename,text), or train/, validation/, test/ sub-folders each "
                           "with one")
    data.add_argument("--data-dir", help="tensorflow-datasets data directory")
    data.add_argument("--offline", action="store_true",
                      help="never download (digit_strings needs no download)")
    data.add_argument("--image-size", type=image_size,
                      help="resize folder images to HEIGHT,WIDTH (default: all must share "
                           "one size)")
    data.add_argument("--augmentation", choices=SEQUENCE_AUGMENTATIONS,
                      help="training-image augmentation: crop (shifts) or affine (rotation/zoom "
                           "+ shifts), or none; default: the preset's (affine)")
    data.add_argument("--train-strings", choices=TRAIN_STRINGS,
                      help="fixed: train on the dataset's training examples; fresh "
                           "(digit_strings only): compose new strings every epoch from the "
                           "digit images of the splits fitted on, each digit augmented on its "
                           "own (--augmentation); default: fresh on digit_strings, else fixed")
    data.add_argument("--max-length", type=int,
                      help="longest output in tokens: the longest label plus its end token; "
                           f"default: the preset's ({SEQUENCE_PRESET['max_length']})")
    model = parser.add_argument_group("model")
    model.add_argument("--variant", help="ViT encoder size and patch, e.g. Ti/4")
    model.add_argument("--patch-size", type=patch_size,
                       help="patch SIZE or HEIGHTxWIDTH (default: full-height strips "
                            f"{STRIP_WIDTH} pixels wide, one token per column)")
    model.add_argument("--hidden-dim", type=int, help="encoder (and decoder) width")
    model.add_argument("--depth", type=int, help="encoder blocks")
    model.add_argument("--num-heads", type=int, help="attention heads")
    model.add_argument("--mlp-dim", type=int, help="MLP width")
    model.add_argument("--position-embedding", choices=POSITION_EMBEDDINGS,
                       help="encoder position embedding: learned, or fixed 2-D sin-cos")
    model.add_argument("--decoder-layers", type=int, help="decoder blocks")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout rate")
    model.add_argument("--beam-width", type=int, default=4,
                       help="beam search width (evaluation and the export)")
    model.add_argument("--fit-on", choices=FIT_ON,
                       help="train: fit on the training split, score validation each epoch and "
                            "keep the best epoch; train+validation: fit on both, keep the last "
                            "epoch; default: the preset's")
    model.add_argument("--tta-shift", type=int,
                       help="decode (evaluation and the export) from every shift of the image "
                            "by up to N pixels, averaging the views' token probabilities at "
                            "each step ((2N+1)^2 views; 0: one view); default: the preset's (2)")
    model.add_argument("--length-penalty", type=float, default=0.6,
                       help="beam search length penalty (GNMT alpha; 0: summed log-probability)")


def _add_optimisation(parser):
    defaults = SequenceConfig()
    optim = parser.add_argument_group("optimisation (the shared recipe)")
    optim.add_argument("--epochs", type=int, help="training epochs")
    optim.add_argument("--batch-size", type=int, help="batch size")
    optim.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
    for name in ("weight_decay", "warmup_fraction", "label_smoothing", "clipnorm"):
        optim.add_argument("--" + name.replace("_", "-"), type=float,
                           default=getattr(defaults, name), help=name.replace("_", " "))
    optim.add_argument("--precision", choices=PRECISIONS,
                       help="dtype policy (auto: as keras-vit train's; the preset: float32)")
    optim.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the train step with XLA")
    optim.add_argument("--seed", type=int, default=0, help="random seed")


def build_parser():
    """The `keras-vit train --task sequence` parser; every option documented in `--help`."""
    parser = argparse.ArgumentParser(prog="keras-vit train --task sequence",
                                     formatter_class=HelpFormatter, description=_description())
    add_task_argument(parser)
    _add_data_and_model(parser)
    _add_optimisation(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="run folder (default runs/sequence_<dataset>)")
    out.add_argument("--overwrite", action="store_true",
                     help="move a finished run in the folder aside and start a new one")
    out.add_argument("--restart", action="store_true",
                     help="move a killed run in the folder aside instead of resuming it")
    add_export_arguments(out, "sequence_<dataset>")
    out.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    return parser


def main(argv=None):
    """Entry point of `keras-vit train --task sequence`; returns the exit code.

    A user error (bad option, bad data, refused folder) prints one line
    `keras-vit train: error: ...` and returns 2 before anything is written.
    """
    args = build_parser().parse_args(argv)
    from pipelines.sequence.job import train_sequence

    return run_training_job(train_sequence, SequenceConfig(**vars(args)), args.debug)
