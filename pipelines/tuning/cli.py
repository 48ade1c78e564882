"""The `keras-vit tune` command line: parser and `main`.

Example:
    keras-vit tune --tuner hyperband --epochs 27 --space depth=2,4,6
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
from pipelines.options import DEFAULT_DATASET, TUNERS
from pipelines.tuning.config import DEFAULT_PROJECT, TuneConfig


def _epilog():
    from keras_vit.tuning import DEFAULT_SEARCH_SPACE, OPTIONAL_SEARCH_KEYS, SAMPLINGS
    from pipelines.data import describe_sources

    keys = textwrap.fill(" ".join(DEFAULT_SEARCH_SPACE), width=72,
                         initial_indent="  keys: ", subsequent_indent="        ")
    return (describe_sources() + "\n\nsearch space (--space KEY=..., repeatable):\n" + keys
            + f"\n        (and {' '.join(OPTIONAL_SEARCH_KEYS)}, fixed unless given)\n"
            f"  KEY=A,B,C choice   KEY=V fixed   KEY=LO:HI[:STEP][:{'|'.join(SAMPLINGS)}] range\n"
            "  e.g. --space depth=2,4 --space hidden_dim=32,64 --space learning_rate=1e-4:3e-3:log\n"
            "\ndistributed: set KERASTUNER_TUNER_ID (chief, tuner0, ...), KERASTUNER_ORACLE_IP\n"
            "and KERASTUNER_ORACLE_PORT and run the same command in every process.")


def _add_search_arguments(parser):
    search = parser.add_argument_group("search")
    search.add_argument("--tuner", choices=TUNERS, default="random", help="search algorithm")
    search.add_argument("--max-trials", type=int, default=10,
                        help="trials at most; caps Hyperband too")
    search.add_argument("--epochs", type=int, default=10,
                        help="epochs per trial; Hyperband's max epochs")
    search.add_argument("--hyperband-factor", type=int, default=3,
                        help="Hyperband's reduction factor")
    search.add_argument("--objective", default="val_accuracy",
                        help="metric to optimise, NAME or NAME:min|max; NAME is one of "
                             "loss, accuracy, val_loss, val_accuracy")
    search.add_argument("--space", action="append", default=[], metavar="KEY=VALUES",
                        help="search-space override (repeatable), see below")
    search.add_argument("--space-file", help="JSON object of search-space overrides; --space "
                                             "values win over it")
    add_runtime_arguments(search)


def build_parser():
    """The `keras-vit tune` argument parser; every option documented in `--help`."""
    parser = argparse.ArgumentParser(
        prog="keras-vit tune", formatter_class=HelpFormatter, epilog=_epilog(),
        description="Search Vision Transformer hyperparameters with keras-tuner, print and\n"
                    "save a leaderboard, and export the best model for TF Serving. Running\n"
                    "again with the same --output-dir/--project-name resumes the search.")
    data = add_data_arguments(parser, DEFAULT_DATASET)
    data.add_argument("--train-examples", type=int,
                      help="train on this many examples per epoch (a fresh random sample each "
                           "epoch) for quick searches; default: the whole split")
    data.add_argument("--validation-examples", type=int,
                      help="score on the first N validation examples; default: all")
    _add_search_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="run folder (default runs/tune_<dataset>)")
    out.add_argument("--project-name", default=DEFAULT_PROJECT,
                     help="search name, a sub-folder of the run folder")
    out.add_argument("--overwrite", action="store_true",
                     help="start the search over instead of resuming it")
    out.add_argument("--retrain-epochs", type=int, default=0,
                     help="retrain the best settings from scratch for N epochs before export; "
                          "0 exports the best trial's model as trained")
    add_export_arguments(out, "vit_<dataset>_tuned")
    return parser


def main(argv=None):
    """Entry point of `keras-vit tune` and `python -m pipelines.tune`; returns the exit code."""
    args = build_parser().parse_args(argv)
    from pipelines.tuning.job import tune

    return run_training_job(tune, TuneConfig(**vars(args)), debug=False, prog="keras-vit tune")
