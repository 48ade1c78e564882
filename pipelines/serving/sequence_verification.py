"""`verify_sequence_export`: check a sequence export in fresh processes.

Two processes run in parallel (`pipelines.serving.verification.run_in_parallel`):

* `pipelines/sequence_serving_checks.py` (keras and keras_vit imports blocked):
  signatures, tokens/text/scores against the Keras model's beam search on the
  sample images (float and PNG), bad requests, empty batches, warm-up replay;
* `saved_model_cli show --all`: both signatures, names, dtypes, batch `-1`.

Example:
>>> print(verify_sequence_export("savedmodels/seq/1", model, vocab, images, beam_width=4,
...                              length_penalty=0.6))
"""

import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from pipelines.serving import saved_model_cli
from pipelines.serving.contract import (
    BYTES_INPUT,
    IMAGES_INPUT,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from pipelines.serving.errors import ExportVerificationError
from pipelines.serving.samples import as_pixel_images, encode_png, make_sample_images
from pipelines.serving.verification import VerificationReport, run_in_parallel

CHECKS_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "sequence_serving_checks.py"
_REPORT_PREFIX = "SERVING_CHECKS_REPORT "


def expected_specs(image_shape, max_length):
    """What `saved_model_cli show` must list for a sequence export."""
    h, w, c = image_shape
    outputs = {"tokens": ("DT_INT32", f"(-1, {max_length})"), "text": ("DT_STRING", "(-1)"),
               "scores": ("DT_FLOAT", "(-1)")}
    return {SERVING_DEFAULT: {"inputs": {IMAGES_INPUT: ("DT_FLOAT", f"(-1, {h}, {w}, {c})")},
                              "outputs": outputs},
            SERVING_BYTES: {"inputs": {BYTES_INPUT: ("DT_STRING", "(-1)")},
                            "outputs": outputs}}


def keras_beam_search(model, images, beam_width, length_penalty, tta_shift=0):
    """`(tokens, scores)` numpy of the Keras model's beam search, traced like the export."""
    import tensorflow as tf

    from keras_vit.models import beam_search, shift_averaged_decode
    from pipelines.sequence.vocab import END, PAD, START

    function = tf.function(lambda x: shift_averaged_decode(
        beam_search, model, x, tta_shift, beam_width=beam_width,
        length_penalty=length_penalty, start_id=START, end_id=END, pad_id=PAD))
    tokens, scores = function(tf.constant(images))
    return tokens.numpy().astype(np.int32), scores.numpy().astype(np.float32)


def verify_sequence_export(export_dir, model, vocab, sample_images=None, *, beam_width,
                           length_penalty, tta_shift=0, atol=None, timeout=600):
    """Checks a sequence export in fresh processes (see the module docstring).

    Args:
        export_dir: the SavedModel folder.
        model: the Keras model it came from.
        vocab: its `CharVocabulary`.
        sample_images: `[N, H, W, C]` pixel images; default 4 seeded random ones.
        beam_width, length_penalty, tta_shift: the export's decoding options.
        atol: tolerance on scores; default by the model's compute dtype.
        timeout: seconds allowed per process.

    Returns:
        A `VerificationReport`.

    Raises:
        ExportVerificationError: on any mismatch or failing check.
    """
    from pipelines.serving.model_info import tolerance_for
    from pipelines.serving.sequence import image_shape_of, max_length_of

    started = time.monotonic()
    export_dir = pathlib.Path(export_dir).resolve()
    image_shape = image_shape_of(model)
    if atol is None:
        atol = tolerance_for(model)
    if sample_images is None:
        sample_images = make_sample_images(image_shape)
    images = as_pixel_images(sample_images, image_shape)
    tokens, scores = keras_beam_search(model, images, beam_width, length_penalty, tta_shift)
    with tempfile.TemporaryDirectory(prefix="keras-vit-verify-") as workdir:
        work = pathlib.Path(workdir)
        np.savez(work / "samples.npz", images=images, tokens=tokens, scores=scores)
        vocab.save(work / "vocab.json")
        png_files = []
        for index, data in enumerate(encode_png(images)):
            png_files.append(str(work / f"sample_{index}.png"))
            pathlib.Path(png_files[-1]).write_bytes(data)
        checks = [sys.executable, "-I", str(CHECKS_SCRIPT), "--export-dir", str(export_dir),
                  "--samples", str(work / "samples.npz"), "--vocab", str(work / "vocab.json"),
                  "--atol", repr(float(atol)), "--png", *png_files]
        show = saved_model_cli.command() + ["show", "--dir", str(export_dir), "--all"]
        outputs = run_in_parallel({"serving_checks": checks, "saved_model_cli show": show},
                                  work, timeout)
    lines = [line for line in outputs["serving_checks"].splitlines()
             if line.startswith(_REPORT_PREFIX)]
    if not lines:
        raise ExportVerificationError("sequence_serving_checks printed no report")
    result = json.loads(lines[-1][len(_REPORT_PREFIX):])
    report = dict(result["checks"])
    report["saved_model_cli show"] = saved_model_cli.check_show_output(
        outputs["saved_model_cli show"], expected_specs(image_shape, max_length_of(model)))
    return VerificationReport(str(export_dir), report, time.monotonic() - started)
