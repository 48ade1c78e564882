"""Interleaved ours-vs-peer timing, tables and JSON results shared by the benchmarks.

Absolute times on a shared machine are noise; a ratio against a peer measured
in the same run, in alternating repetitions, is not (much). Each comparison:

1. warms both callables up (tracing / XLA compilation is excluded),
2. runs calls alternating one by one between ours and the peer, swapping
   which side goes first every pair (ABBA), so load changes hit both sides
   alike, for at least `min_pairs` pairs and `min_time` seconds per side,
3. reports the median time per call of each side and the median of the
   paired ratios `peer / ours` of adjacent calls (> 1: ours faster), with the
   ratio's interquartile range (its noise) and the same ratio in process CPU
   time (steadier when other processes compete for the CPUs).
"""

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "runs" / "bench"  # git-ignored (`runs/`)

# A ratio below 1 - TOLERANCE counts as "ours slower". Timing noise on a shared
# 2-core machine is a few percent even with interleaving and medians.
TOLERANCE = 0.05
# ...and "consistently slower" when, besides, the sign test over the call pairs
# says ours lost more of them than chance allows (p below this).
SIGNIFICANCE = 0.01


@dataclass
class Comparison:
    """Median seconds per call of each side and the median paired ratio peer / ours."""

    ours_s: float
    peer_s: float
    ratio: float  # median over adjacent call pairs of peer_time / ours_time; > 1: ours faster
    pairs: int
    ratio_q1: float = float("nan")  # quartiles of the paired ratios: their spread is the noise
    ratio_q3: float = float("nan")
    # Same ratio from process CPU time (all threads): blind to time spent waiting
    # for a CPU that other processes hold, so steadier on a loaded machine.
    cpu_ratio: float = float("nan")
    # One-sided sign test: the chance of ours losing at least this many of the
    # pairs if both were equally fast. Small: ours really is slower.
    p_slower: float = float("nan")
    # Seconds of each side's first call: tracing (and XLA compilation) included.
    ours_first_s: float = float("nan")
    peer_first_s: float = float("nan")
    ours_samples: list = field(default_factory=list)
    peer_samples: list = field(default_factory=list)
    ours_cpu_samples: list = field(default_factory=list)
    peer_cpu_samples: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def _timed(fn, wall, cpu):
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    cpu.append(time.process_time() - start_cpu)
    wall.append(time.perf_counter() - start)


def sign_test_p(losses, pairs):
    """P(X >= losses) for X ~ Binomial(pairs, 1/2)."""
    return sum(math.comb(pairs, k) for k in range(losses, pairs + 1)) / 2 ** pairs


def _paired(ours, peer):
    """Sorted ratios peer / ours of adjacent calls."""
    return sorted(p / max(o, 1e-12) for o, p in zip(ours, peer))


def interleave(calls, *, min_rounds=9, min_time=1.0, max_rounds=400, warmup=2):
    """Times several zero-argument callables in rounds, one call of each per round.

    The order inside a round rotates from round to round, so no callable always
    runs first (or right after the same neighbour), and each round's calls share
    the same machine load. Rounds continue until there are `min_rounds` of them
    and every callable has run for `min_time` seconds (or `max_rounds`).

    Args:
        calls: dict name -> zero-argument callable doing one unit of work, and
            blocking until it is done (TF on CPU executes synchronously).
        min_rounds: least number of rounds: the repeats.
        min_time: least total seconds of calls per callable.
        max_rounds: cap on rounds for very fast calls.
        warmup: untimed calls per callable first (tracing, XLA compilation, caches).

    Returns:
        dict name -> `{"wall": [...], "cpu": [...], "first_s": seconds of the first
        call}`; `wall[i]` / `cpu[i]` come from round `i` for every name.

    Example:
        >>> timings = interleave({"a": step_a, "b": step_b}, min_rounds=5)
        >>> statistics.median(timings["a"]["wall"])
    """
    names = list(calls)
    timings = {name: {"wall": [], "cpu": [], "first_s": float("nan")} for name in names}
    for name in names:
        first = []
        for _ in range(max(warmup, 1)):
            _timed(calls[name], first, [])
        timings[name]["first_s"] = first[0]

    def more():
        done = len(timings[names[0]]["wall"])
        return done < max_rounds and (done < min_rounds or any(
            sum(timings[name]["wall"]) < min_time for name in names))

    while more():
        shift = len(timings[names[0]]["wall"]) % len(names)
        for name in names[shift:] + names[:shift]:
            _timed(calls[name], timings[name]["wall"], timings[name]["cpu"])
    return timings


def paired_comparison(ours, peer):
    """A `Comparison` of two `interleave` timings whose round `i` ran under the same load."""
    ratios = _paired(ours["wall"], peer["wall"])
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return Comparison(statistics.median(ours["wall"]), statistics.median(peer["wall"]),
                      statistics.median(ratios), len(ratios), quartiles[0], quartiles[2],
                      statistics.median(_paired(ours["cpu"], peer["cpu"])),
                      sign_test_p(sum(r < 1.0 for r in ratios), len(ratios)),
                      ours["first_s"], peer["first_s"], ours["wall"], peer["wall"],
                      ours["cpu"], peer["cpu"])


def compare(ours, peer, *, min_pairs=9, min_time=1.0, max_pairs=400, warmup=2):
    """Times zero-argument callables `ours` and `peer` interleaved; returns a `Comparison`.

    Calls alternate one by one (ours, peer, peer, ours, ...: the side going first
    swaps every pair), so each ours call has a peer call next to it in time,
    under the same machine load. Pairs continue until there are `min_pairs`
    of them and each side has run for `min_time` seconds (or `max_pairs`).

    Each callable must block until its work is done (TF on CPU executes
    synchronously, so calling a `tf.function` is enough).

    Args:
        ours, peer: zero-argument callables doing one unit of work.
        min_pairs: least number of (ours, peer) call pairs: the repeats.
        min_time: least total seconds of calls per side.
        max_pairs: cap on pairs for very fast calls.
        warmup: untimed calls per side first (tracing, XLA compilation, caches).
    """
    timings = interleave({"ours": ours, "peer": peer}, min_rounds=min_pairs,
                         min_time=min_time, max_rounds=max_pairs, warmup=warmup)
    return paired_comparison(timings["ours"], timings["peer"])


def percentile(values, q):
    """The `q`-th percentile (0-100) of `values`, linear between order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio_cell(result):
    """`"1.012 ±0.04"`: the median paired ratio, ± half its interquartile range."""
    return f"{result.ratio:.3f} ±{(result.ratio_q3 - result.ratio_q1) / 2:.2f}"


def format_table(headers, rows):
    """Plain-text table with right-aligned columns (left-aligned first column)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def verdict(results, tolerance=TOLERANCE, what="ratio"):
    """`(passed, clearly_slower, text)` for a list of `Comparison`s.

    `passed`: every median ratio is >= 1 - tolerance ("ours not slower").
    `clearly_slower`: some median ratio is below that AND ours lost more of that
    comparison's call pairs than chance allows (sign test p < SIGNIFICANCE),
    i.e. not just noise. A handful of pairs can never be significant.
    """
    results = [r for r in results if r is not None and not math.isnan(r.ratio)]
    if not results:
        return True, False, "no comparisons ran"
    threshold = 1.0 - tolerance
    worst = min(r.ratio for r in results)
    below = [r for r in results if r.ratio < threshold]
    if not below:
        return True, False, (f"ours not slower: every {what} >= {threshold:.2f} "
                             f"(tolerance {tolerance:.0%}; worst {worst:.3f})")
    clear = [r for r in below if r.p_slower < SIGNIFICANCE]
    text = (f"OURS SLOWER: {len(below)}/{len(results)} {what}s below {threshold:.2f} "
            f"(tolerance {tolerance:.0%}; worst {worst:.3f}); ")
    if clear:
        text += (f"{len(clear)} of them consistently (ours lost significantly many call "
                 f"pairs, sign test p < {SIGNIFICANCE})")
    else:
        text += ("none consistently (sign test over the call pairs: p >= "
                 f"{SIGNIFICANCE}): likely machine noise, rerun on a quieter machine")
    return False, bool(clear), text


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# CPU flags that decide matmul speed: vector width, FMA, and native bfloat16.
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                         "amx_bf16")


def cpu_facts(cpuinfo_path="/proc/cpuinfo"):
    """`{"model": ..., "flags": [...of interest...], "native_bf16": bool}` from /proc/cpuinfo.

    Native bf16 means AVX-512 BF16 or AMX-BF16 (oneDNN then runs bf16 matmuls in
    hardware; elsewhere TensorFlow emulates them, slower than float32). The same
    rule as `pipelines.precision.cpu_has_bf16`.

    Example:
        >>> cpu_facts()["native_bf16"]
        True
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags.update(value.split())
    except OSError:
        pass
    present = [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags]
    return {"model": model, "flags": present,
            "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags}


def precisions_for_this_cpu(cpu=None):
    """`("float32", "mixed_bfloat16")` where the CPU has native bf16, else `("float32",)`."""
    cpu = cpu or cpu_facts()
    return ("float32", "mixed_bfloat16") if cpu["native_bf16"] else ("float32",)


def environment():
    """Versions and machine facts stored with every result file."""
    import keras
    import tensorflow as tf

    from pipelines.onednn import onednn_enabled

    info = {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_facts(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "onednn": onednn_enabled(),
    }
    try:
        import keras_hub

        info["keras_hub"] = keras_hub.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = os.getloadavg()
    return info


def write_results(name, payload):
    """Writes `payload` plus the environment to `runs/bench/<name>.json`, prints and returns the path.

    The printed path is relative to the repository when the results folder is
    inside it (tests point `RESULTS_DIR` elsewhere).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results: {os.path.relpath(path, REPO_ROOT)}")
    return path


def load_note():
    """One line about machine load, printed with each table: it explains noisy runs."""
    if not hasattr(os, "getloadavg"):
        return ""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def cpu_note():
    """One line naming the CPU and its flags that matter for matmuls."""
    from pipelines.onednn import onednn_note

    cpu = cpu_facts()
    return (f"CPU {cpu['model']}; flags: {' '.join(cpu['flags']) or 'none of interest'}; "
            f"native bf16: {'yes' if cpu['native_bf16'] else 'no'}; {onednn_note()}")


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def _run_checked(command, what, *, env=None, timeout):
    """`subprocess.run(command)` from the repository root, output captured; raises if it failed.

    Raises:
        RuntimeError: `what` exited non-zero (its stderr tail in the message).
    """
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                               check=False, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} exited {completed.returncode}: {completed.stderr[-2000:]}")
    return completed


def run_job(command, timeout=7200):
    """Runs a training-job command line from the repository root; returns its wall seconds.

    Args:
        command: argv list.
        timeout: seconds before it is killed.

    Raises:
        RuntimeError: the job exited non-zero (its stderr tail in the message).

    Example:
    >>> seconds = run_job([sys.executable, "-m", "pipelines.cli", "train", "--epochs", "1"])
    """
    with Stopwatch() as wall:
        _run_checked(command, "training job", timeout=timeout)
    return wall.seconds


def run_worker(module, args, *, env=None, timeout=3600):
    """Runs `python -m MODULE ARGS...` from the repository root; returns the JSON of its last stdout line.

    The benchmarks' fresh-process workers (`memory_worker`, `decoding_onednn`,
    `serving_worker`) print one JSON record as their last line.

    Args:
        module: the worker's module name, e.g. `"benchmarks.memory_worker"`.
        args: its command-line arguments (converted with `str`).
        env: the worker's environment (None: this process's).
        timeout: seconds before it is killed.

    Raises:
        RuntimeError: the worker exited non-zero (its stderr tail in the message).

    Example:
    >>> record = run_worker("benchmarks.decoding_onednn", [5, 20])
    """
    completed = _run_checked([sys.executable, "-m", module] + [str(arg) for arg in args],
                             module, env=env, timeout=timeout)
    return json.loads(completed.stdout.strip().splitlines()[-1])
