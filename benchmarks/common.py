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
    first_ours, first_peer, unused = [], [], []
    for _ in range(max(warmup, 1)):
        _timed(ours, first_ours, unused)
        _timed(peer, first_peer, unused)
    ours_wall, peer_wall, ours_cpu, peer_cpu = [], [], [], []
    while len(ours_wall) < max_pairs and (len(ours_wall) < min_pairs
                                          or sum(ours_wall) < min_time
                                          or sum(peer_wall) < min_time):
        if len(ours_wall) % 2 == 0:
            _timed(ours, ours_wall, ours_cpu)
            _timed(peer, peer_wall, peer_cpu)
        else:
            _timed(peer, peer_wall, peer_cpu)
            _timed(ours, ours_wall, ours_cpu)
    ratios = _paired(ours_wall, peer_wall)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return Comparison(statistics.median(ours_wall), statistics.median(peer_wall),
                      statistics.median(ratios), len(ratios), quartiles[0], quartiles[2],
                      statistics.median(_paired(ours_cpu, peer_cpu)),
                      sign_test_p(sum(r < 1.0 for r in ratios), len(ratios)),
                      first_ours[0], first_peer[0], ours_wall, peer_wall, ours_cpu, peer_cpu)


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
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    """Versions and machine facts stored with every result file."""
    import keras
    import tensorflow as tf

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
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
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
    """Writes `payload` plus the environment to `runs/bench/<name>.json`; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_note():
    """One line about machine load, printed with each table: it explains noisy runs."""
    if not hasattr(os, "getloadavg"):
        return ""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
