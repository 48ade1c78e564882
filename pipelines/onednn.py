"""oneDNN for TensorFlow on every x86 CPU, unless the user chose otherwise.

TensorFlow runs its matmuls, convolutions and XLA's dots through oneDNN only
where `TF_ENABLE_ONEDNN_OPTS` says so, and when it is unset it decides by the
CPU: on with AVX-512 VNNI/BF16 or AMX (Intel Cascade Lake and later, AMD Zen 4
and later), **off** on CPUs with AVX2/FMA only (AMD Zen 3, Intel Haswell to
Skylake client parts), which then fall back to Eigen's kernels. On a 2-core
Zen 3 the sequence preset's XLA training step took 141-148 ms with Eigen and
80-98 ms with oneDNN, and a `(2048, 64) @ (64, 64)` matmul 1.9 ms against
0.8 ms (README.md, "oneDNN on AVX2-only CPUs"). So keras-vit's commands turn it
on where TensorFlow would leave it off, and an explicit value (`0` included)
is always kept.

TensorFlow reads the variable once, when it is imported: `pipelines/__init__.py`
calls `prefer_onednn()` first thing, so `keras-vit ...`, `python -m pipelines.X`
and `python -m benchmarks` get it, and so do the processes they start (the
environment is inherited). A program that imported TensorFlow before
`pipelines` keeps TensorFlow's choice; `make` exports the variable for every
target, so tests and benchmarks run the configuration the jobs use.

Example:
>>> import os
>>> prefer_onednn({})  # an empty environment: the default is filled in
True
>>> prefer_onednn({"TF_ENABLE_ONEDNN_OPTS": "0"})  # the user's choice stays
False
"""

import os

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn(environ=None):
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` in `environ` (default `os.environ`) when it is unset.

    Args:
        environ: the mapping to update; `None` is this process's environment.

    Returns:
        bool: whether the variable was set here (False: it already had a value).
    """
    environ = os.environ if environ is None else environ
    if environ.get(ONEDNN_VARIABLE, "") != "":
        return False
    environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_enabled():
    """Whether the imported TensorFlow runs its kernels through oneDNN (imports TensorFlow).

    Returns None where TensorFlow does not say (its `IsMklEnabled` check is
    internal and may move).

    Example:
    >>> onednn_enabled()  # on any x86 CPU after `import pipelines`
    True
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_note():
    """`"oneDNN: on"` / `"oneDNN: off (TF_ENABLE_ONEDNN_OPTS=0)"`, for the jobs' logs."""
    enabled = onednn_enabled()
    state = {True: "on", False: "off", None: "unknown"}[enabled]
    value = os.environ.get(ONEDNN_VARIABLE)
    return f"oneDNN: {state}" + (f" ({ONEDNN_VARIABLE}={value})" if value not in (None, "1")
                                 else "")


def compute_line(policy, reason, xla):
    """The jobs' log line on how they compute: precision (and why), XLA, oneDNN.

    Example:
    >>> compute_line("float32", "requested", True)
    'precision: float32 (requested); XLA: on; oneDNN: on'
    """
    return f"precision: {policy} ({reason}); XLA: {'on' if xla else 'off'}; {onednn_note()}"
