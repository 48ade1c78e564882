"""`python -m benchmarks [NAME ...] [--quick] [--xla] ...` (`make bench`: all of them).

Exit status: 0 when every benchmark passes or misses only within noise, 1 when
ours is consistently slower somewhere (see `benchmarks.common.verdict`), or
with `--strict`, 1 on any ratio below the tolerance.
"""

import argparse
import sys

from benchmarks import common

# name -> module; each has `run(quick, repeats, tolerance, xla) -> (passed, clearly_slower)`.
BENCHMARKS = {
    "attention": "benchmarks.bench_attention",
    "vit": "benchmarks.bench_vit",
    "gemm": "benchmarks.bench_gemm",
    "serving": "benchmarks.bench_serving",
    "input": "benchmarks.bench_input",
    "memory": "benchmarks.bench_memory",
    "job": "benchmarks.bench_job",
    "decoding": "benchmarks.bench_decoding",
    "folder": "benchmarks.bench_folder",
}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed of keras_vit against a peer, as ratios measured interleaved in one "
                    "run. Results also go to runs/bench/<name>.json.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, from {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: fewer sizes, smaller batches, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None,
                        help="least number of interleaved ours/peer pairs per comparison")
    parser.add_argument("--tolerance", type=float, default=common.TOLERANCE,
                        help="a ratio below 1 - tolerance counts as slower (default: "
                             f"{common.TOLERANCE})")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="auto",
                        help="also time under XLA (jit_compile=True); auto and on: yes, "
                             "off: plain graphs only (XLA compiles of a whole ViT take "
                             "minutes on a loaded CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra/inter-op threads (default: TensorFlow's choice)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 on any ratio below the tolerance, even within noise")
    return parser


def parse_arguments(argv=None):
    """`(args, names)`: the parsed options and the benchmarks to run, in order, once each.

    Exits with status 2 (argparse) naming an unknown benchmark. Imports no TensorFlow.

    Example:
        >>> parse_arguments(["gemm", "--quick"])[1]
        ['gemm']
    """
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be a positive integer; received {args.repeats}")
    return args, list(dict.fromkeys(args.names)) or list(BENCHMARKS)


def main(argv=None):
    args, names = parse_arguments(argv)
    import importlib

    from pipelines.onednn import prefer_onednn

    prefer_onednn()  # before TensorFlow is imported, as keras-vit's commands (pipelines/onednn.py)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}; "
          f"{common.load_note()}\n{common.cpu_note()}")
    print("Times are noisy on a shared machine; judge the ratios (peer and ours alternate "
          "call by call), not the absolute numbers.")
    failed = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        passed, clearly_slower = module.run(quick=args.quick, repeats=args.repeats,
                                            tolerance=args.tolerance, xla=args.xla != "off")
        if clearly_slower or (args.strict and not passed):
            failed.append(name)
    if failed:
        print(f"\nbenchmarks: ours slower in {', '.join(failed)}")
        return 1
    print("\nbenchmarks: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
