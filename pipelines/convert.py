"""`keras-vit convert`: a published ViT checkpoint -> a `.keras` model (and a served SavedModel).

The model takes raw [0, 255] pixels (the checkpoint's normalisation is inside
it). Nothing is written unless the checkpoint loads, the model saves and the
optional export succeeds: the `.keras` file is written under a temporary name
and renamed last, and `export_model` publishes its version atomically. An
existing output file is kept unless `--overwrite` is given. Exit status: 0
done, 2 bad input (options, an unreadable or bad checkpoint, an existing
output), 1 writing the model or its export failed.

Example:
    keras-vit convert ViT-B_16.npz vit_b16_384.keras --image-size 384,384 --num-classes 10
    keras-vit convert timm_vit/ vit.keras --export vit --export-dir savedmodels
"""

import argparse
import os
import pathlib
import sys

from pipelines.cli_args import image_size


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit convert",
        description="Convert a ViT checkpoint (Google .npz, Hugging Face folder, timm "
                    ".safetensors, keras-hub preset) into a .keras model.")
    parser.add_argument("checkpoint",
                        help="local checkpoint file or folder (nothing is downloaded)")
    parser.add_argument("output", help="the .keras file to write (refused if it exists, "
                                       "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file")
    parser.add_argument("--image-size", type=image_size,
                        help="HEIGHT,WIDTH of the model's input (position embedding resampled); "
                             "default: the checkpoint's")
    parser.add_argument("--num-classes", type=int,
                        help="classes of the head; a different count gets a new zero head")
    parser.add_argument("--num-heads", type=int,
                        help="attention heads (timm state dicts without config.json)")
    parser.add_argument("--mean", type=_floats,
                        help="input mean in [0, 1] units, e.g. 0.485,0.456,0.406")
    parser.add_argument("--std", type=_floats,
                        help="input std in [0, 1] units, e.g. 0.229,0.224,0.225")
    parser.add_argument("--export", metavar="NAME", help="also export a TF Serving SavedModel NAME")
    parser.add_argument("--export-dir", default="savedmodels",
                        help="base folder of the exported versions (default: savedmodels)")
    return parser


def _floats(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers; received {text!r}") from None
    return values[0] if len(values) == 1 else values


#: Exit status for bad arguments, a bad checkpoint or an existing output (as argparse uses).
EXIT_USAGE = 2
#: Exit status for writing the model or its export failing.
EXIT_FAILED = 1


class WriteError(RuntimeError):
    """Writing the `.keras` file or the export failed; nothing was published."""


def load_for_conversion(checkpoint, output, *, image_size=None, num_classes=None,
                        num_heads=None, mean=None, std=None, export_name=None,
                        export_dir="savedmodels", overwrite=False):
    """Checks the options and the output path, then loads the checkpoint; writes nothing.

    Returns:
        The loaded `keras.Model`.

    Raises:
        ValueError: a bad option, an existing `output` without `overwrite`, a
            checkpoint that does not load (`CheckpointError`), or an unreadable
            `models.config` in `export_dir`.
        OSError: the checkpoint cannot be read.
    """
    from keras_vit.models import load_checkpoint

    output = pathlib.Path(output)
    if output.suffix != ".keras":
        raise ValueError(f"the output must be a .keras file; received {str(output)!r}")
    if output.is_dir():
        raise ValueError(f"the output {str(output)!r} is a folder; expected a .keras file path")
    if output.exists() and not overwrite:
        raise ValueError(_exists_message(output))
    if export_name is not None:
        from pipelines.serving.model_info import validate_model_name
        from pipelines.serving.repository import read_models_config

        validate_model_name(export_name)
        read_models_config(export_dir)  # one that does not parse fails now, not after the save
    return load_checkpoint(checkpoint, image_shape=image_size, num_classes=num_classes,
                           num_heads=num_heads, mean=mean, std=std)


def _exists_message(output):
    return (f"the output {str(output)!r} exists; pass --overwrite (overwrite=True) to replace "
            "it, or choose another name")


def write_conversion(model, output, *, export_name=None, export_dir="savedmodels",
                     overwrite=False):
    """Saves `model` to `output` (and exports it), publishing the `.keras` file last.

    The file is written under a temporary name, then hard-linked to `output`
    (which fails if a file of that name appeared in the meantime) or, with
    `overwrite`, renamed over it.

    Raises:
        ValueError: `output` appeared since `load_for_conversion` checked it.
        WriteError: saving or exporting failed; no `.keras` file was published.
    """
    output = pathlib.Path(output)
    temporary = output.with_name(f".{output.stem}.{os.getpid()}.tmp.keras")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(temporary)
        if export_name is not None:
            from pipelines.serving.transaction import export_model

            export_model(model, export_name, export_dir)
        _publish(temporary, output, overwrite)
    except FileExistsError:
        if output.exists():
            raise ValueError(_exists_message(output)) from None
        raise WriteError(f"cannot create {str(output.parent)!r}: a file of that name "
                         "exists") from None
    except Exception as error:  # every failure of this phase is a write error
        raise WriteError(f"writing {str(output)!r} failed: {error}") from error
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # e.g. its folder could not be made: nothing to remove
            pass


def _publish(temporary, output, overwrite):
    """`temporary` becomes `output`; without `overwrite` never over an existing file."""
    if overwrite:
        os.replace(temporary, output)
        return
    try:
        os.link(temporary, output)  # atomic, and fails if `output` exists
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if output.exists():
            raise FileExistsError(str(output)) from None
        os.replace(temporary, output)


def convert(checkpoint, output, *, image_size=None, num_classes=None, num_heads=None, mean=None,
            std=None, export_name=None, export_dir="savedmodels", overwrite=False):
    """Loads `checkpoint`, writes `output` (.keras) and optionally exports it; returns the model.

    Args:
        checkpoint: path accepted by `keras_vit.models.load_checkpoint`.
        output: path of the `.keras` file.
        image_size: `(height, width)` or None for the checkpoint's.
        num_classes, num_heads, mean, std: as in `load_checkpoint`.
        export_name: served model name, or None for no export.
        export_dir: base folder of the served versions.
        overwrite: bool. Replace an existing `output`; otherwise it is a
            ValueError, raised before the checkpoint is read.

    Returns:
        The loaded `keras.Model`.

    Raises:
        ValueError, OSError: bad input (`load_for_conversion`); nothing written.
        WriteError: writing failed (`write_conversion`); nothing published.

    Example:
    >>> convert("ViT-B_16.npz", "vit_b16_384.keras", image_size=(384, 384), num_classes=10)
    """
    model = load_for_conversion(checkpoint, output, image_size=image_size,
                                num_classes=num_classes, num_heads=num_heads, mean=mean, std=std,
                                export_name=export_name, export_dir=export_dir,
                                overwrite=overwrite)
    write_conversion(model, output, export_name=export_name, export_dir=export_dir,
                     overwrite=overwrite)
    return model


def main(argv=None):
    """`keras-vit convert ...`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        model = convert(args.checkpoint, args.output, image_size=args.image_size,
                        num_classes=args.num_classes, num_heads=args.num_heads, mean=args.mean,
                        std=args.std, export_name=args.export, export_dir=args.export_dir,
                        overwrite=args.overwrite)
    except WriteError as error:
        print(f"keras-vit convert: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as error:  # bad input; CheckpointError is a ValueError
        print(f"keras-vit convert: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.output}: input {model.input_shape[1:]}, output {model.output_shape[1:]}, "
          f"{model.count_params():,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
