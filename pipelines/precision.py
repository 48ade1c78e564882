"""Choosing the numeric precision of a run for the hardware at hand."""


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def cpu_has_bf16(cpuinfo_path="/proc/cpuinfo"):
    """Whether the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX-BF16).

    Args:
        cpuinfo_path: str. Where the kernel lists the CPU flags.

    Returns:
        bool; False when the flags cannot be read.
    """
    try:
        with open(cpuinfo_path) as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested="auto", has_gpu=None, has_bf16_cpu=None):
    """Resolves a `--precision` value to a Keras dtype policy name and says why.

    `auto` picks mixed_float16 on a GPU (tensor cores), mixed_bfloat16 on a
    CPU with native bf16 (oneDNN runs bf16 matmuls on AMX / AVX-512 BF16: a
    ViT train step measured about 2x faster than float32 on this project's
    2-core machine, see README), and float32 elsewhere, where bf16 is emulated
    and slower.

    Args:
        requested: one of `PRECISIONS`.
        has_gpu: bool or None. Whether TensorFlow sees a GPU; None asks TensorFlow.
        has_bf16_cpu: bool or None. Whether the CPU has bf16; None reads the flags.

    Returns:
        `(policy_name, reason)`.

    Example:
    >>> choose_precision("auto")
    ('mixed_bfloat16', 'auto: no GPU; the CPU has native bfloat16 (AMX/AVX-512 BF16)')
    """
    if requested not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; received {requested!r}")
    if requested != "auto":
        return requested, "requested"
    if has_gpu is None:
        import tensorflow as tf  # here, so the CLIs read PRECISIONS without loading TF

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        return "mixed_float16", "auto: a GPU is present"
    if has_bf16_cpu is None:
        has_bf16_cpu = cpu_has_bf16()
    if has_bf16_cpu:
        return "mixed_bfloat16", "auto: no GPU; the CPU has native bfloat16 (AMX/AVX-512 BF16)"
    return "float32", "auto: no GPU and no native bfloat16 on this CPU"
