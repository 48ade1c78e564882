"""TensorFlow's `saved_model_cli`, used as an independent reader of an export.

Example:
    >>> text = subprocess.run(command() + ["show", "--dir", d, "--all"], ...).stdout
    >>> check_show_output(text, expected_signature_specs((8, 8, 3), 10, 5, False))
"""

import pathlib
import re
import sys

import numpy as np

from pipelines.serving.contract import (
    BYTES_INPUT,
    IMAGES_INPUT,
    LABELS_OUTPUT,
    PREDICT_METHOD,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from pipelines.serving.errors import ExportVerificationError


def command():
    """Command prefix for saved_model_cli from this interpreter's environment.

    Example:
        >>> command()
        ['/venv/bin/saved_model_cli']
    """
    script = pathlib.Path(sys.executable).with_name("saved_model_cli")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def parse_saved_model_cli_show(text):
    """Parse `saved_model_cli show --all` output into a dict per signature.

    Returns:
        `{signature: {"inputs": {key: (dtype, shape)}, "outputs": {...}, "method": str}}`.

    Example:
        >>> parse_saved_model_cli_show(out)["serving_bytes"]["inputs"]
        {'images_bytes': ('DT_STRING', '(-1)')}
    """
    signatures, current, section, key = {}, None, None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Concrete Functions"):
            break
        match = re.match(r"signature_def\['([^']+)'\]:", stripped)
        if match:
            current = signatures.setdefault(match.group(1), {"inputs": {}, "outputs": {}})
            continue
        if current is None:
            continue
        match = re.match(r"(inputs|outputs)\['([^']+)'\] tensor_info:", stripped)
        if match:
            section, key = match.groups()
            current[section][key] = [None, None]
        elif stripped.startswith(("dtype:", "shape:")) and key:
            field, value = stripped.split(":", 1)
            current[section][key][field == "shape"] = value.strip()
        elif stripped.startswith("Method name is:"):
            current["method"] = stripped.split(":", 1)[1].strip()
    for signature in signatures.values():
        for section in ("inputs", "outputs"):
            signature[section] = {k: tuple(v) for k, v in signature[section].items()}
    return signatures


def expected_signature_specs(image_shape, num_classes, top_k, with_labels):
    """The signatures `saved_model_cli show` must list: `{sig: {"inputs", "outputs"}}`.

    Example:
        >>> expected_signature_specs((8, 8, 1), 10, 3, False)["serving_bytes"]["inputs"]
        {'images_bytes': ('DT_STRING', '(-1)')}
    """
    h, w, c = image_shape
    outputs = {
        "probabilities": ("DT_FLOAT", f"(-1, {num_classes})"),
        "top_k_classes": ("DT_INT32", f"(-1, {top_k})"),
        "top_k_scores": ("DT_FLOAT", f"(-1, {top_k})"),
    }
    if with_labels:
        outputs[LABELS_OUTPUT] = ("DT_STRING", f"(-1, {top_k})")
    return {
        SERVING_DEFAULT: {
            "inputs": {IMAGES_INPUT: ("DT_FLOAT", f"(-1, {h}, {w}, {c})")},
            "outputs": outputs,
        },
        SERVING_BYTES: {"inputs": {BYTES_INPUT: ("DT_STRING", "(-1)")}, "outputs": outputs},
    }


def check_show_output(text, expected):
    """Raise ExportVerificationError unless `show --all` lists `expected`; return a summary.

    Example:
        >>> check_show_output(text, expected_signature_specs((8, 8, 3), 4, 3, True))
        'lists serving_bytes, serving_default with the expected dtypes and batch -1'
    """
    found = parse_saved_model_cli_show(text)
    for name, spec in expected.items():
        if name not in found:
            raise ExportVerificationError(
                f"saved_model_cli does not list signature {name!r}; found {sorted(found)}"
            )
        for section in ("inputs", "outputs"):
            if found[name][section] != spec[section]:
                raise ExportVerificationError(
                    f"saved_model_cli {name} {section}: expected {spec[section]}, "
                    f"got {found[name][section]}"
                )
        if found[name].get("method") != PREDICT_METHOD:
            raise ExportVerificationError(f"{name} method is {found[name].get('method')!r}")
    return f"lists {', '.join(sorted(expected))} with the expected dtypes and batch -1"


def check_run_output(outdir, expected_probabilities, atol):
    """Check the `.npy` outputs of `saved_model_cli run`; return a summary.

    Args:
        outdir: the `--outdir` of the run.
        expected_probabilities: Keras probabilities `[N, K]`, or None.
        atol: ties closer than this may pick either class.

    Example:
        >>> check_run_output(work / "cli_run", expected, 1e-4)
        'serving_default in a TF1 session: top classes [2, 0], probabilities (2, 4)'
    """
    classes = np.load(pathlib.Path(outdir) / "top_k_classes.npy")
    probabilities = np.load(pathlib.Path(outdir) / "probabilities.npy")
    top1 = classes[:, 0]
    if expected_probabilities is not None:
        best = expected_probabilities.max(axis=1)
        picked = expected_probabilities[np.arange(len(top1)), top1]
        # The same top class, up to ties closer than the tolerance.
        if np.any(picked < best - atol):
            raise ExportVerificationError(
                f"saved_model_cli run top classes {top1.tolist()} differ from Keras "
                f"{expected_probabilities.argmax(axis=1).tolist()}"
            )
    return (
        f"serving_default in a TF1 session: top classes {top1.tolist()}, "
        f"probabilities {probabilities.shape}"
    )
