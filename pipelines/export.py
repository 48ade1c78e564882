"""`keras-vit export`: export a saved `.keras` classifier for TensorFlow Serving.

Writes `savedmodels/<name>/<version>/` in the layout `tensorflow_model_server`
polls (see savedmodels/README.md) through `pipelines.serving.transaction.export_model`.
This module is the command line; the work lives in `pipelines/serving/`. The names
other modules import from here (`export_model`, `validate_model_name`, ...) are
re-exported so `from pipelines.export import export_model` keeps working.

Exit status: 0 exported; 2 bad arguments or model file (nothing written);
1 the export failed its checks (nothing published).

Example:
    keras-vit export --model runs/vit.keras --name vit --class-names @labels.txt --keep 3
"""

import argparse
import pathlib
import sys

from pipelines.serving.contract import (  # noqa: F401  (re-exported)
    BYTES_INPUT,
    DEFAULT_CONFIG_BASE_PATH,
    DEFAULT_VERSION_POLICY,
    FLOAT32_ATOL,
    IMAGES_INPUT,
    LABELS_OUTPUT,
    METADATA_FILENAME,
    MIXED_PRECISION_ATOL,
    MODELS_CONFIG_FILENAME,
    OUTPUT_KEYS,
    SERVING_BYTES,
    SERVING_DEFAULT,
    WARMUP_FILENAME,
)
from pipelines.serving.errors import (  # noqa: F401
    DisallowedOpsError,
    ExportError,
    ExportVerificationError,
    ModelFileError,
)
from pipelines.serving.model_file import check_model_file, load_keras_model
from pipelines.serving.model_info import (  # noqa: F401
    check_class_names,
    check_distinct_names,
    check_top_k,
    compute_dtype_of,
    image_shape_of,
    num_classes_of,
    tolerance_for,
    validate_model_name,
)
from pipelines.serving.op_audit import find_disallowed_ops, saved_model_op_names  # noqa: F401
from pipelines.serving.repository import (  # noqa: F401
    check_served_versions,
    list_exported_models,
    list_versions,
    parse_version_policy,
    prune_versions,
    read_models_config,
    write_models_config,
)
from pipelines.serving.samples import as_pixel_images, encode_png, make_sample_images  # noqa: F401
from pipelines.serving.saved_model_cli import (  # noqa: F401
    expected_signature_specs,
    parse_saved_model_cli_show,
)
from pipelines.serving.signatures import (  # noqa: F401
    build_serving_fns,
    check_float_images,
    read_metadata,
    write_metadata,
    write_saved_model,
)
from pipelines.serving.transaction import export_model
from pipelines.serving.verification import VerificationReport, verify_export  # noqa: F401
from pipelines.serving.warmup import (  # noqa: F401
    build_warmup_logs,
    read_warmup_requests,
    write_warmup_requests,
)

#: Exit status for bad arguments or a bad model file (as argparse uses).
EXIT_USAGE = 2
#: Exit status for an export that was attempted and failed.
EXIT_FAILED = 1


def parse_class_names(value):
    """`a,b,c` or `@file` (UTF-8, one name per line) -> list of names, or None.

    Args:
        value: the `--class-names` argument. Names are stripped; blank lines of a
            file are skipped.

    Raises:
        ValueError: naming `--class-names` and the value: an empty or repeated
            name, or a file that is not UTF-8 text.
        OSError: naming `--class-names` and the file: it cannot be read.

    Example:
        >>> parse_class_names("cat, dog")
        ['cat', 'dog']
    """
    if not value:
        return None
    if value.startswith("@"):
        path = value[1:]
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"--class-names {value}: {path} is not UTF-8 text with one class "
                             f"name per line ({error})") from None
        except OSError as error:
            raise OSError(f"--class-names {value}: cannot read {path}: "
                          f"{error.strerror or error}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",")]
    try:
        check_distinct_names(names)
    except ValueError as error:
        raise ValueError(f"--class-names {value!r}: {error}") from None
    return names


def build_parser():
    """The `keras-vit export` argument parser; every option documented in `--help`."""
    parser = argparse.ArgumentParser(
        prog="keras-vit export",
        description="Export a saved .keras image classifier as the next version of a "
        "TF Serving model under --base-dir, verify it and update models.config.",
        epilog="Exit status: 0 exported, 2 bad arguments or model file, 1 export failed. "
        "Example: keras-vit export --model runs/vit.keras --name vit --class-names cat,dog "
        "--keep 3",
    )
    add = parser.add_argument
    add("--model", required=True, help="path to the trained .keras model")
    add("--name", required=True,
        help="served model name (letters, digits, '_', '-'); its folder under --base-dir")
    add("--base-dir", default="savedmodels", help="TF Serving base folder (default: savedmodels)")
    add("--class-names", default=None,
        help="comma separated class names, or @FILE with one name per line; adds the "
        "top_k_labels output")
    add("--top-k", type=int, default=5, help="classes in the top_k_* outputs (default: 5)")
    add("--keep", type=int, default=None, metavar="N",
        help="after exporting, delete all but the N newest versions (default: keep all)")
    add("--verify", action=argparse.BooleanOptionalAction, default=True,
        help="verify the export in a fresh process (signatures vs Keras, saved_model_cli, "
        "warm-up replay) before publishing it (default: --verify)")
    add("--config-base-path", default=DEFAULT_CONFIG_BASE_PATH,
        help="where the server sees --base-dir, for base_path in models.config (default: "
        "/models, the tensorflow/serving docker image with -v $PWD/savedmodels:/models)")
    add("--absolute-base-paths", action="store_true",
        help="write absolute host paths into models.config instead (for a "
        "tensorflow_model_server running on this machine)")
    add("--version-policy", default=None,
        help="versions served for this model: latest[:N], all or specific:V1,V2 "
        "(default: keep the current policy, initially latest:1)")
    add("--quiet", action="store_true", help="print only the new version folder")
    return parser


def _checked_inputs(args):
    """Check every argument and load the model; ValueError/OSError on bad input.

    The model file is checked before TensorFlow is imported, so a wrong path or a
    corrupt file is reported at once.
    """
    validate_model_name(args.name)
    check_model_file(args.model)
    if args.keep is not None and args.keep < 1:
        raise ValueError(f"--keep must be >= 1, got {args.keep}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    policy = None if args.version_policy is None else parse_version_policy(args.version_policy)
    # models.config parses (the export rewrites it) and the policy serves versions
    # that will exist: checked before anything is loaded or written.
    check_served_versions(args.base_dir, args.name, policy=policy, keep_versions=args.keep)
    class_names = parse_class_names(args.class_names)
    model = load_keras_model(args.model)
    try:
        num_classes = num_classes_of(model)
    except ValueError as error:
        raise ValueError(f"--model {args.model}: {error}") from None
    check_class_names(class_names, num_classes)
    return model, class_names


def _error(message):
    print(f"keras-vit export: error: {message}", file=sys.stderr)


def main(argv=None):
    """`keras-vit export ...`; returns the process exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        model, class_names = _checked_inputs(args)
    except (ValueError, OSError) as error:
        _error(error)
        return EXIT_USAGE
    try:
        version_dir = export_model(
            model,
            args.name,
            args.base_dir,
            class_names=class_names,
            top_k=args.top_k,
            verify=args.verify,
            keep_versions=args.keep,
            config_base_path=None if args.absolute_base_paths else args.config_base_path,
            version_policy=args.version_policy,
            verbose=not args.quiet,
        )
    except (ValueError, OSError, ExportError) as error:
        _error(error)
        return EXIT_FAILED
    if args.quiet:
        print(version_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
