"""`python -m benchmarks.memory_worker SIDE POLICY DEPTH BATCH COMPILER STEPS`: one side's peak memory.

Builds one ViT (`benchmarks.vit_models`: SIDE "ours" or "keras_hub") under the
dtype POLICY, compiles it (COMPILER "graph" or "xla"), runs STEPS training
steps at batch BATCH, and prints one JSON line: resident memory (MiB) after the
imports, after building, and the process's peak (`ru_maxrss`) before and after
the steps. Run in its own process so each side's peak is its own.

Example:
    python -m benchmarks.memory_worker ours float32 12 32 graph 3
"""

import json
import os
import resource
import sys


def _rss_mib():
    """Current resident set (Linux: /proc/self/statm, in pages); NaN elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib():
    """This process's peak resident set: `VmHWM` (Linux), else `ru_maxrss`."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(side, policy, depth, batch, compiler, steps):
    """The memory record of one side (see the module docstring)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    from benchmarks import vit_models

    record = dict(side=side, policy=policy, depth=depth, batch=batch, compiler=compiler,
                  steps=steps, rss_after_imports_mib=_rss_mib())
    model = vit_models.compile_for_benchmark(vit_models.build(side, policy, depth),
                                             compiler == "xla")
    images, labels = vit_models.random_batch(batch)
    record.update(rss_after_build_mib=_rss_mib(), peak_before_steps_mib=_peak_mib(),
                  parameters=model.count_params())
    for _ in range(steps):
        model.train_on_batch(images, labels)
    record.update(peak_mib=_peak_mib(), rss_after_steps_mib=_rss_mib())
    record["step_peak_above_build_mib"] = record["peak_mib"] - record["rss_after_build_mib"]
    return record


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 6:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    side, policy, depth, batch, compiler, steps = argv
    print(json.dumps(measure(side, policy, int(depth), int(batch), compiler, int(steps))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
