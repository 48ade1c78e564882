"""`keras-vit predict`: classify image files with an exported model.

`keras-vit predict IMAGE... (--server URL | --grpc HOST:PORT | --saved-model DIR)`
sends the files as they are to the `serving_bytes` signature (decoding and
resizing happen inside the served graph) and prints the top-k labels per image in
the same format for all three back ends:

    cat.jpg
      1. cat           0.9312
      2. dog           0.0421

An image-to-sequence export (`keras-vit train --task sequence`; its signatures
return `text`) prints the text read from each image and its beam score:

    plate.png
      text: 4071  (score -0.0213)

When some files are not at the model's size or channel count, one line on stderr
says so (`keras-vit predict: resizing 2 of 3 images to 32x32 (from ...)`); the model
size comes from the SavedModel or the server's model metadata.

`--signature serving_default` decodes and resizes the files on the client instead
(same code as the graph) and sends float32 pixels. This module is the command line;
the clients live in `pipelines/serving/` and are re-exported here.

Example:
    keras-vit predict cat.jpg dog.png --server http://localhost:8501 --model-name vit
    keras-vit predict cat.jpg --grpc localhost:8500 --model-name vit --top-k 3
    keras-vit predict cat.jpg --saved-model savedmodels/vit/1
"""

import argparse
import sys

from pipelines.serving.backends import Backend, open_backend, predict  # noqa: F401
from pipelines.serving.contract import (  # noqa: F401  (re-exported)
    INPUT_NAMES,
    LABELS_OUTPUT,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from pipelines.serving.errors import PredictError
from pipelines.serving.grpc_client import (  # noqa: F401
    GRPC_MAX_MESSAGE_BYTES,
    build_grpc_request,
    grpc_predict,
    parse_grpc_response,
)
from pipelines.serving.image_files import (  # noqa: F401
    conversion_note,
    decode_for_float_signature,
    image_format,
    native_image_shapes,
    read_images,
)
from pipelines.serving.local_client import local_predict, saved_model_image_shape  # noqa: F401
from pipelines.serving.rest_client import (  # noqa: F401
    build_rest_request,
    parse_rest_response,
    rest_predict,
)
from pipelines.serving.results import (
    format_predictions,
    predictions_json,
    top_k_predictions,
)
from pipelines.serving.sequence_results import (
    format_texts,
    is_sequence_output,
    read_texts,
    texts_json,
)


def _parse_image_size(value):
    try:
        parts = [int(p) for p in value.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(3)
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or H,W,C, got {value!r}")
    return tuple(parts)


def build_parser():
    """The `keras-vit predict` argument parser; every option documented in `--help`."""
    parser = argparse.ArgumentParser(
        prog="keras-vit predict",
        description="Classify image files with an exported model through TF Serving (REST "
        "or gRPC) or a local SavedModel folder, printing the top-k labels per image.",
        epilog="Example: keras-vit predict cat.jpg --server http://localhost:8501 "
        "--model-name vit",
    )
    add = parser.add_argument
    add("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/GIF/BMP files, sent as they are")
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--server", metavar="URL",
                         help="TF Serving REST endpoint, e.g. http://localhost:8501")
    backend.add_argument("--grpc", metavar="HOST:PORT",
                         help="TF Serving gRPC endpoint, e.g. localhost:8500")
    backend.add_argument("--saved-model", metavar="DIR",
                         help="run a SavedModel version folder in this process, e.g. "
                         "savedmodels/vit/1")
    add("--model-name", default=None, help="served model name (required with --server/--grpc)")
    add("--signature", default=SERVING_BYTES, choices=sorted(INPUT_NAMES),
        help="serving_bytes sends the files (default); serving_default decodes and resizes "
        "them here and sends float32 pixels")
    add("--image-size", type=_parse_image_size, default=None, metavar="H,W[,C]",
        help="model image size through a server (default: from the server's model "
        "metadata); used by --signature serving_default and the resize note")
    add("--top-k", type=int, default=None,
        help="labels to print per image (default: all that the export returns)")
    add("--timeout", type=float, default=60.0,
        help="seconds to wait for the server's answer (default: 60)")
    add("--json", action="store_true",
        help="print JSON [{image, predictions: [{label, score}]}] instead of text")
    return parser


def _classify(args):
    """Read the files, say what gets converted, run the back end; the signature outputs."""
    images = read_images(args.images)
    backend = open_backend(server=args.server, grpc_target=args.grpc,
                           saved_model=args.saved_model, model_name=args.model_name,
                           timeout=args.timeout)
    # --image-size saves asking a server; a local SavedModel always knows its size.
    if args.image_size and args.saved_model is None:
        image_shape = args.image_size
    else:
        image_shape = backend.image_shape()
    shapes = native_image_shapes(images)
    note = image_shape and conversion_note(shapes, image_shape)
    if note:
        print(f"keras-vit predict: {note}", file=sys.stderr)
    try:
        return backend.predict(images, args.signature, image_shape)
    except PredictError as error:
        # The server says what is wrong, not with which file: name the ones that do not decode.
        bad = [path for path, shape in zip(args.images, shapes) if shape is None]
        if not bad:
            raise
        raise PredictError(f"{error} (files that do not decode: {', '.join(bad)})") from None


def main(argv=None):
    """`keras-vit predict ...`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.saved_model is None and not args.model_name:
        parser.error("--model-name is required with --server or --grpc")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    try:
        outputs = _classify(args)
    except (PredictError, ValueError, OSError) as error:
        print(f"keras-vit predict: error: {error}", file=sys.stderr)
        return 1
    if is_sequence_output(outputs):  # an image-to-text export: print the text read
        texts = read_texts(outputs)
        print(texts_json(args.images, texts) if args.json else format_texts(args.images, texts))
        return 0
    predictions = top_k_predictions(outputs, args.top_k)
    if args.json:
        print(predictions_json(args.images, predictions))
    else:
        print(format_predictions(args.images, predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
