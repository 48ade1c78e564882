"""Choosing the numeric precision of a run for the hardware at hand."""


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _cpu_flags(cpuinfo_path):
    try:
        with open(cpuinfo_path) as cpuinfo:
            return set(cpuinfo.read().split())
    except OSError:
        return set()


def cpu_has_bf16(cpuinfo_path="/proc/cpuinfo"):
    """Whether the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX-BF16).

    Args:
        cpuinfo_path: str. Where the kernel lists the CPU flags.

    Returns:
        bool; False when the flags cannot be read.
    """
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags(cpuinfo_path))


def cpu_has_amx_bf16(cpuinfo_path="/proc/cpuinfo"):
    """Whether the CPU has AMX-BF16 tiles (`amx_bf16` in its flags); False when unreadable."""
    return "amx_bf16" in _cpu_flags(cpuinfo_path)


def choose_precision(requested="auto", has_gpu=None, has_bf16_cpu=None, has_amx=None,
                     xla=True):
    """Resolves a `--precision` value to a Keras dtype policy name and says why.

    `auto` picks mixed_float16 on a GPU (tensor cores); on a CPU it picks
    mixed_bfloat16 only where bf16 was measured faster than float32: a CPU
    with AMX-BF16 running plain graphs (`xla=False`). Measured on a 2-core
    AMX Xeon (benchmarks/README.md, session 23): as graphs a ViT-Ti/16
    training step ran 1.33x faster in bf16, but under XLA the same bf16 step
    reached only 141 GFLOP/s against 223 as a graph, 0.85x float32's speed
    under XLA, and the digits job's epochs ran 0.8x float32's.
    AVX-512 BF16 alone does not make bf16 pay in TensorFlow: on such a Xeon
    (KVM, no AMX exposed) a bf16 matmul ran at 0.60x float32's speed and a
    ViT-Ti/16 training step at 0.57x; without either flag bf16 is emulated.

    Args:
        requested: one of `PRECISIONS`.
        has_gpu: bool or None. Whether TensorFlow sees a GPU; None asks TensorFlow.
        has_bf16_cpu: bool or None. Whether the CPU has bf16 (AVX-512 BF16 or
            AMX-BF16); None reads the flags.
        has_amx: bool or None. Whether the CPU has AMX-BF16; None reads the flags.
        xla: bool. Whether the run compiles its steps with XLA (`--xla`, on by
            default in every job).

    Returns:
        `(policy_name, reason)`.

    Example:
    >>> choose_precision("auto")  # AVX-512 BF16, no AMX
    ('float32', 'auto: no GPU; AVX-512 BF16 without AMX (bf16 measured slower than float32)')
    >>> choose_precision("auto", has_gpu=False, has_amx=True, xla=False)[0]
    'mixed_bfloat16'
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
    if has_amx is None:
        has_amx = cpu_has_amx_bf16()
    if has_amx:
        if xla:
            return "float32", ("auto: no GPU; AMX-BF16, but under XLA bf16 measured slower "
                               "than float32 (--no-xla picks mixed_bfloat16)")
        return "mixed_bfloat16", "auto: no GPU; the CPU has AMX-BF16 and XLA is off"
    if has_bf16_cpu is None:
        has_bf16_cpu = cpu_has_bf16()
    if has_bf16_cpu:
        return "float32", ("auto: no GPU; AVX-512 BF16 without AMX (bf16 measured slower "
                           "than float32)")
    return "float32", "auto: no GPU and no native bfloat16 on this CPU"
