"""Choosing the numeric precision and XLA for a run, on the hardware at hand."""

import time

import keras
import numpy as np
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def cpu_has_bf16():
    """Whether the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _step_seconds(build_model, policy, batch, jit_compile, steps=8):
    """Median seconds of a compiled train step of `build_model()` under `policy`."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model()
        model.compile(keras.optimizers.AdamW(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit_compile)
        images, labels = batch
        model.train_on_batch(images, labels)  # compile outside the timing
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            model.train_on_batch(images, labels)
            times.append(time.perf_counter() - start)
        return float(np.median(times))
    finally:
        keras.config.set_dtype_policy(previous)


def choose_precision(requested, build_model, batch, jit_compile, log=print):
    """Resolves `auto` to a dtype policy name and says why.

    `auto` picks mixed_float16 on a GPU; on a CPU with bf16 hardware it times a
    few train steps of the real model in float32 and mixed_bfloat16 and keeps
    the faster (tiny models can lose to the casts); float32 otherwise.

    Args:
        requested: one of `PRECISIONS`.
        build_model: zero-argument callable returning a fresh uncompiled model.
        batch: `(images, labels)` numpy batch for the timing.
        jit_compile: bool. Whether the run compiles with XLA.
        log: callable taking a message.

    Returns:
        `(policy_name, reason)`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; received {requested!r}")
    if requested != "auto":
        return requested, "requested"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "auto: a GPU is present"
    if not cpu_has_bf16():
        return "float32", "auto: this CPU has no bfloat16 instructions"
    f32 = _step_seconds(build_model, "float32", batch, jit_compile)
    bf16 = _step_seconds(build_model, "mixed_bfloat16", batch, jit_compile)
    choice = "mixed_bfloat16" if bf16 < f32 else "float32"
    reason = (f"auto: measured train step float32 {f32 * 1e3:.1f} ms vs mixed_bfloat16 "
              f"{bf16 * 1e3:.1f} ms on this CPU")
    log(f"precision {choice} ({reason})")
    return choice, reason
