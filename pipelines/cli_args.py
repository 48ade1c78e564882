"""Small parsers and argument groups shared by the job command lines (`train`, `tune`)."""

import argparse
import os
import sys
import traceback


def safe_name(text):
    """A dataset name or path as a folder / model-name fragment: `"folder:/a/b c"` -> `"b_c"`."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.basename(
        str(text).rstrip("/"))).strip("_") or "dataset"


def image_size(text):
    """`--image-size` value: `HEIGHT,WIDTH`, `HEIGHTxWIDTH` or `SIZE` -> `(height, width)`."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH or SIZE; received {text!r}")
    return tuple(parts)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the hand-laid-out description and epilog; appends each option's set default.

    Options whose default is None (the preset or the data decides) or a False
    switch show none: "(default: None)" would say nothing.
    """

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def add_data_arguments(parser, default_dataset):
    """The `data` group both jobs share: source, folders, bad files, size, augmentation, order.

    Args:
        parser: an `argparse.ArgumentParser`.
        default_dataset: str. `--dataset` when not given.

    Returns:
        The group, for job-specific data options.

    Example:
    >>> data = add_data_arguments(parser, "digits")
    >>> data.add_argument("--train-examples", type=int)
    """
    from pipelines.options import AUGMENTATIONS, BAD_IMAGE_POLICIES

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=default_dataset,
                      help="'digits' (embedded, no network), a tfds name, or an image folder")
    data.add_argument("--data-dir", help="tensorflow-datasets data directory")
    data.add_argument("--offline", action="store_true",
                      help="never touch the network: the tfds dataset must be prepared already")
    data.add_argument("--on-bad-image", default="error", choices=BAD_IMAGE_POLICIES,
                      help="image folders: every file is checked before training; an "
                           "undecodable one is an error naming it, or is left out with a "
                           "warning (skip)")
    data.add_argument("--image-size", type=image_size, help="resize images to HEIGHT,WIDTH")
    data.add_argument("--augmentation", choices=AUGMENTATIONS,
                      help="training augmentation (default: what suits the data)")
    data.add_argument("--deterministic", action="store_true",
                      help="reproducible input order and augmentation")
    return data


def add_runtime_arguments(group):
    """`--precision`, `--xla` and `--seed`, with the choices of `pipelines.options`."""
    from pipelines.options import PRECISIONS

    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with "
                            "AMX-BF16 and --no-xla, float32 otherwise (bf16 measured slower "
                            "under XLA and on AVX-512 BF16 without AMX)")
    group.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                       help="compile train and predict steps with XLA (faster on this CPU)")
    group.add_argument("--seed", type=int, default=0, help="random seed")


def add_export_arguments(group, default_model_name):
    """`--model-name`, `--export-dir`, `--[no-]export`, `--[no-]verify-export`, `--verbose`.

    Args:
        group: an argparse group.
        default_model_name: str. How the default model name is made, for `--help`.
    """
    from pipelines.options import VERBOSITY

    group.add_argument("--model-name", help=f"export name (default {default_model_name})")
    group.add_argument("--export-dir", default="savedmodels", help="TF Serving model base folder")
    group.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                       help="export the best model for TF Serving at the end")
    group.add_argument("--verify-export", action=argparse.BooleanOptionalAction, default=True,
                       help="verify the export in a fresh process")
    group.add_argument("--verbose", type=int, default=1, choices=VERBOSITY,
                       help="Keras fit verbosity (1: progress bar)")


class TrainingDiverged(RuntimeError):
    """Training ended with a non-finite loss: nothing is exported."""


def run_training_job(job, config, debug, prog="keras-vit train"):
    """Runs `job(config)` the way `keras-vit train` reports it; returns the exit status.

    Bad options or data (`ValueError`, `OSError`) print one line
    `<prog>: error: ...` (plus the traceback with `--debug`) and give 2; a run
    whose loss went non-finite (`TrainingDiverged`) gives 1, nothing exported;
    Ctrl-C gives 130 with the resume hint; success 0. Both training tasks and
    `keras-vit tune` (`prog`) use it.

    Example:
    >>> sys.exit(run_training_job(train, TrainConfig(**vars(args)), args.debug))
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # Keras' own progress bar is the one to watch.
    try:
        job(config)
    except (ValueError, OSError) as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split("\n"))
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
