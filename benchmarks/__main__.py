"""`python -m benchmarks [attention] [vit] [--quick] [--xla] ...` (`make bench`: all of them).

Exit status: 0 when every benchmark passes or misses only within noise, 1 when
ours is consistently slower somewhere (see `benchmarks.common.verdict`), or
with `--strict`, 1 on any ratio below the tolerance.
"""

import argparse
import sys

from benchmarks import common

BENCHMARKS = ("attention", "vit")


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
                        help="also time under XLA (jit_compile=True); auto: attention yes, "
                             "vit no (XLA compiles of the whole model take minutes on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra/inter-op threads (default: TensorFlow's choice)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 on any ratio below the tolerance, even within noise")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}; "
          f"{common.load_note()}")
    print("Times are noisy on a shared machine; judge the ratios (peer and ours alternate "
          "call by call), not the absolute numbers.")
    failed = []
    for name in names:
        if name == "attention":
            from benchmarks import bench_attention as module
            xla = args.xla != "off"
        else:
            from benchmarks import bench_vit as module
            xla = args.xla == "on"
        passed, clearly_slower = module.run(quick=args.quick, repeats=args.repeats,
                                            tolerance=args.tolerance, xla=xla)
        if clearly_slower or (args.strict and not passed):
            failed.append(name)
    if failed:
        print(f"\nbenchmarks: ours slower in {', '.join(failed)}")
        return 1
    print("\nbenchmarks: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
