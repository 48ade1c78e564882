"""`verify_export`: check an export in fresh processes, as a model server would see it.

Three processes run in parallel, none of them importing keras_vit:

* `pipelines/serving_checks.py` (keras and keras_vit imports blocked): loads the
  SavedModel, checks both signatures' specs, compares `serving_default` on the
  sample images and `serving_bytes` on their PNG encodings with the Keras model's
  probabilities, tries bad requests and replays every warm-up record;
* `saved_model_cli show --all`: both signatures, names, dtypes, batch `-1`;
* `saved_model_cli run --signature_def serving_default`: same top class.

Example:
    >>> print(verify_export("savedmodels/vit/3", model))
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipelines.serving import saved_model_cli
from pipelines.serving.contract import (
    FLOAT32_ATOL,
    IMAGES_INPUT,
    LABELS_OUTPUT,
    METADATA_FILENAME,
    SERVING_DEFAULT,
)
from pipelines.serving.errors import ExportVerificationError
from pipelines.serving.model_info import image_shape_of, num_classes_of, tolerance_for
from pipelines.serving.samples import as_pixel_images, encode_png, make_sample_images
from pipelines.serving.signatures import read_metadata

SERVING_CHECKS_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "serving_checks.py"
_REPORT_PREFIX = "SERVING_CHECKS_REPORT "


@dataclasses.dataclass
class VerificationReport:
    """What `verify_export` checked; `str()` gives the short printed report.

    Example:
        >>> print(VerificationReport("/tmp/x", {"signatures": "ok"}, 1.5))
        Verified /tmp/x in 1.5s:
          ok  signatures: ok
    """

    export_dir: str
    checks: dict
    seconds: float

    def __str__(self):
        lines = [f"Verified {self.export_dir} in {self.seconds:.1f}s:"]
        lines += [f"  ok  {name}: {detail}" for name, detail in self.checks.items()]
        return "\n".join(lines)


def _spawn(command, workdir, name, env):
    # Files, not pipes: three chatty processes could fill a pipe and block. Closed
    # by _finish / run_in_parallel.
    out = open(pathlib.Path(workdir) / f"{name}.out", "w")  # noqa: SIM115
    err = open(pathlib.Path(workdir) / f"{name}.err", "w")  # noqa: SIM115
    process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=workdir)
    return process, out, err


def _finish(spawned, name, timeout):
    """Wait for one spawned process; its stdout, or ExportVerificationError."""
    process, out, err = spawned
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise ExportVerificationError(f"{name} did not finish within {timeout}s") from None
    finally:
        out.close()
        err.close()
    stdout = pathlib.Path(out.name).read_text()
    stderr = pathlib.Path(err.name).read_text()
    if process.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise ExportVerificationError(f"{name} failed (exit {process.returncode}):\n{tail}")
    return stdout


def run_in_parallel(commands, workdir, timeout):
    """Run `{name: argv}` at once in `workdir`; return `{name: stdout}`.

    The first failure stops the others and raises ExportVerificationError.

    Example:
        >>> run_in_parallel({"echo": ["echo", "hi"]}, "/tmp", 10)
        {'echo': 'hi\\n'}
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # the parent may already hold the GPU
    spawned = {
        name: _spawn(argv, workdir, name.replace(" ", "_"), env) for name, argv in commands.items()
    }
    try:
        return {name: _finish(process, name, timeout) for name, process in spawned.items()}
    finally:
        for process, out, err in spawned.values():  # after a failure, stop the others
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()


def _write_samples(work, images, expected):
    """Sample arrays and PNG files for the checking processes; the PNG paths."""
    arrays = {"images": images}
    if expected is not None:
        arrays["expected"] = expected
    np.savez(work / "samples.npz", **arrays)
    np.save(work / "images.npy", images)
    png_files = []
    for i, data in enumerate(encode_png(images)):
        png_files.append(str(work / f"sample_{i}.png"))
        pathlib.Path(png_files[-1]).write_bytes(data)
    return png_files


def _commands(export_dir, work, png_files, atol):
    # -I: isolated mode, no script dir / cwd / PYTHON* env on sys.path.
    checks = [sys.executable, "-I", str(SERVING_CHECKS_SCRIPT)]
    checks += ["--export-dir", str(export_dir), "--samples", str(work / "samples.npz")]
    checks += ["--atol", repr(float(atol)), "--png", *png_files]
    show = saved_model_cli.command() + ["show", "--dir", str(export_dir), "--all"]
    run = saved_model_cli.command() + ["run", "--dir", str(export_dir), "--tag_set", "serve"]
    run += ["--signature_def", SERVING_DEFAULT]
    run += ["--inputs", f"{IMAGES_INPUT}={work / 'images.npy'}"]
    run += ["--outdir", str(work / "cli_run"), "--overwrite"]
    return {"serving_checks": checks, "saved_model_cli show": show, "saved_model_cli run": run}


def _checks_report(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith(_REPORT_PREFIX)]
    if not lines:
        raise ExportVerificationError("serving_checks printed no report")
    return json.loads(lines[-1][len(_REPORT_PREFIX) :])


def _model_facts(export_dir, model):
    """(image_shape, num_classes) from the model, else from the export's metadata."""
    if model is not None:
        return image_shape_of(model), num_classes_of(model)
    metadata = read_metadata(export_dir)
    if not metadata:
        raise ValueError(f"{export_dir} has no {METADATA_FILENAME}; pass the model")
    return tuple(metadata["image_shape"]), metadata["num_classes"]


def _keras_probabilities(model, images):
    import tensorflow as tf

    logits = tf.cast(model(images, training=False), tf.float32)
    return tf.nn.softmax(logits, axis=-1).numpy()


def verify_export(export_dir, model=None, sample_images=None, *, atol=None, timeout=600):
    """Check an export in fresh processes (see the module docstring).

    Args:
        export_dir: the SavedModel folder (a version folder or a temp folder).
        model: the Keras model it came from; without it the signatures are only
            compared with each other.
        sample_images: `[N, H, W, C]` pixel images; default 4 seeded random images.
            They are rounded to uint8 values (PNG is lossless on those).
        atol: tolerance on probabilities; default `tolerance_for(model)`.
        timeout: seconds allowed per process.

    Returns:
        A `VerificationReport`.

    Raises:
        ExportVerificationError: on any mismatch or failing check.

    Example:
        >>> print(verify_export("savedmodels/vit/3", model))
    """
    started = time.monotonic()
    export_dir = pathlib.Path(export_dir).resolve()
    image_shape, num_classes = _model_facts(export_dir, model)
    if atol is None:
        atol = tolerance_for(model) if model is not None else FLOAT32_ATOL
    if sample_images is None:
        sample_images = make_sample_images(image_shape)
    images = as_pixel_images(sample_images, image_shape)
    expected = _keras_probabilities(model, images) if model is not None else None
    with tempfile.TemporaryDirectory(prefix="keras-vit-verify-") as workdir:
        work = pathlib.Path(workdir)
        png_files = _write_samples(work, images, expected)
        outputs = run_in_parallel(_commands(export_dir, work, png_files, atol), work, timeout)
        result = _checks_report(outputs["serving_checks"])
        specs = saved_model_cli.expected_signature_specs(
            image_shape, num_classes, result["top_k"], LABELS_OUTPUT in result["outputs"]
        )
        checks = dict(result["checks"])
        checks["saved_model_cli show"] = saved_model_cli.check_show_output(
            outputs["saved_model_cli show"], specs
        )
        checks["saved_model_cli run"] = saved_model_cli.check_run_output(
            work / "cli_run", expected, atol
        )
    return VerificationReport(str(export_dir), checks, time.monotonic() - started)
