"""`python -m benchmarks.serving_worker OURS_DIR PEER_DIR ...`: time two SavedModels.

Runs in a fresh process that imports TensorFlow only (no keras_vit, no
keras-hub, no pipelines: what a serving process has). Loads both SavedModels with
`tf.saved_model.load`, calls each one's `serving_default` signature and times,
interleaved round by round (order rotating):

- `throughput`: one call on a batch of `--batch` images;
- `latency`: one call on a single image.

Prints its JSON record as the last stdout line (`common.run_worker` reads
it): `{"timings": {task: {side: {"wall": [...], "cpu": [...], "first_s"}}},
"modules_imported": {"keras_vit": False, "keras_hub": False, ...},
"inputs": {side: input name}, "output_dtypes": ...}`. Only the standard
library and TensorFlow are imported here (`benchmarks.common` imports
neither at module level; `import tensorflow` pulls in `keras` by itself).

Example:
    python -m benchmarks.serving_worker /tmp/ours /tmp/peer --batch 32 --rounds 50
"""

import argparse
import json
import sys


def load_signature(export_dir):
    """`(loaded object, serving_default signature, its one input's name)`."""
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)  # must outlive every call of the signature
    signature = loaded.signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        raise ValueError(f"{export_dir}: expected one input in serving_default; got "
                         f"{sorted(kwargs)}")
    return loaded, signature, next(iter(kwargs))


def serving_call(signature, name, images):
    """A zero-argument callable: one request of `images`, every output fetched as numpy."""
    return lambda: {key: value.numpy() for key, value in signature(**{name: images}).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_worker")
    parser.add_argument("ours")
    parser.add_argument("peer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from benchmarks import common

    with open(f"{args.ours}/assets.extra/keras_vit_export.json") as handle:
        image_shape = tuple(json.load(handle)["image_shape"])
    rng = np.random.default_rng(args.seed)
    batch = tf.constant(rng.uniform(0, 255, (args.batch, *image_shape)).astype("float32"))
    single = batch[:1]
    sides = {side: load_signature(path) for side, path in (("ours", args.ours),
                                                           ("keras_hub", args.peer))}
    result = {"timings": {}, "inputs": {side: s[2] for side, s in sides.items()},
              "output_dtypes": {side: {key: value.dtype.name for key, value in
                                       s[1](**{s[2]: single}).items()}
                                for side, s in sides.items()}}
    for task, images in (("throughput", batch), ("latency", single)):
        calls = {side: serving_call(signature, name, images)
                 for side, (_, signature, name) in sides.items()}
        result["timings"][task] = common.interleave(
            calls, min_rounds=args.rounds, min_time=args.min_time, warmup=3)
    # `import tensorflow` itself imports keras (TF 2.16+ with Keras 3 installed);
    # what matters is that neither model's library is needed to serve it.
    result["modules_imported"] = {name: name in sys.modules
                                  for name in ("keras_vit", "keras_hub", "keras", "pipelines")}
    print(json.dumps(result))  # the last stdout line: common.run_worker reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
