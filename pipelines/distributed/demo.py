"""`python -m pipelines.distributed.demo`: a tiny multi-worker training job.

A small ViT on the embedded digits (or on prepared TFRecords), trained with
the training job's recipe (AdamW, warm-up + cosine, label-smoothed
cross-entropy, clipnorm) by `fit_distributed`. It is the loopback demo
(scripts/demo_multiworker.sh) and what the multi-worker tests launch; the
training job wires the same pieces for `keras-vit train --distribute multi_worker`.

Run it once per worker with that worker's TF_CONFIG; only the chief writes
`--run-dir` (history, best weights, backup, result.json) and the export.

Example:
    TF_CONFIG='{"cluster":{"worker":["127.0.0.1:23456","127.0.0.1:23457"]},
                "task":{"type":"worker","index":0}}' \\
      python -m pipelines.distributed.demo --distribute multi_worker --run-dir runs/mw
"""

import argparse
import json
import os
import sys
import time

PROG = "python -m pipelines.distributed.demo"


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the chief's run folder")
    parser.add_argument("--distribute", choices=("none", "multi_worker"), default="none",
                        help="one process, or the workers of TF_CONFIG")
    parser.add_argument("--dataset", default="digits",
                        help="'digits' (embedded) or tfrecord:PATH (from `keras-vit prepare`)")
    parser.add_argument("--data-service", help="grpc://HOST:PORT of a tf.data service dispatcher")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="the GLOBAL batch size")
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over train")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for all workers")
    parser.add_argument("--export-dir", help="chief: export a SavedModel here (version 1)")
    parser.add_argument("--weights-out", help="every worker: save final weights (.npz) here")
    return parser


def _check(args):
    for name in ("epochs", "batch_size", "steps_per_epoch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    if not (args.dataset == "digits" or args.dataset.startswith("tfrecord:")):
        raise ValueError(f"--dataset {args.dataset!r}: expected 'digits' or tfrecord:PATH")


def digits_arrays():
    """(train, validation) as (float32 images (N, 8, 8, 1) in [0, 255], int32 labels)."""
    from sklearn.datasets import load_digits

    from pipelines.digits_dataset import split_indices, to_pixel_scale

    digits = load_digits()
    images = to_pixel_scale(digits.images)[..., None].astype("float32")
    labels = digits.target.astype("int32")
    indices = split_indices()
    return tuple((images[indices[s]], labels[indices[s]]) for s in ("train", "validation"))


def make_datasets(args):
    """Train (global batches, one-hot labels, seeded order) and validation datasets."""
    import tensorflow as tf

    if args.dataset.startswith("tfrecord:"):
        from pipelines.records import tfrecord_datasets

        data = tfrecord_datasets(args.dataset[len("tfrecord:"):], batch_size=args.batch_size,
                                 seed=args.seed, drop_remainder=True)
        train, validation, shape, classes = (data.train, data.validation,
                                             data.info.image_shape, data.info.num_classes)
    else:
        (x_train, y_train), (x_val, y_val) = digits_arrays()
        train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                 .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
                 .batch(args.batch_size, drop_remainder=True))
        validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(args.batch_size)
        shape, classes = x_train.shape[1:], 10
    if args.data_service:
        from pipelines.data_service import distribute_through_service

        train = distribute_through_service(train, args.data_service)
    one_hot = lambda x, y: (x, tf.one_hot(y, classes))
    return train.map(one_hot), validation.map(one_hot), tuple(shape), classes


def build_model(image_shape, num_classes):
    """A ViT small enough for a few CPU seconds per epoch."""
    from keras_vit.models import vision_transformer

    return vision_transformer("Ti/2", image_shape=image_shape, num_classes=num_classes,
                              hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, pooling="gap")


def training_recipe(learning_rate, total_steps):
    """AdamW on warm-up + cosine, clipnorm 1, label-smoothed cross-entropy."""
    import keras

    warmup = int(0.1 * total_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(total_steps - warmup, 1), warmup_target=learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05, clipnorm=1.0)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    return optimizer, loss


def run(args, log=print):
    """The job after argument checks; returns the chief's result dict."""
    from pipelines.distribute import make_strategy
    from pipelines.distributed.cluster import read_tf_config

    cluster = read_tf_config() if args.distribute == "multi_worker" else None
    start = time.perf_counter()
    # First, before any TensorFlow op (collectives are configured at start-up).
    strategy = make_strategy(args.distribute, startup_timeout=(
        args.startup_timeout if cluster else None))
    if args.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) is not divisible "
                         f"by the {strategy.num_replicas_in_sync} replicas in sync")
    import keras

    from pipelines.distributed.loop import fit_distributed

    keras.utils.set_random_seed(args.seed)
    train, validation, shape, classes = make_datasets(args)
    steps = args.steps_per_epoch or int(train.cardinality())
    with strategy.scope():
        model = build_model(shape, classes)
        optimizer, loss = training_recipe(args.learning_rate, args.epochs * steps)
    history = fit_distributed(model, optimizer, loss, train, validation, epochs=args.epochs,
                              run_dir=args.run_dir, strategy=strategy, cluster=cluster,
                              steps_per_epoch=steps, global_batch_size=args.batch_size, log=log)
    if args.weights_out:
        import numpy as np

        np.savez(args.weights_out, *model.get_weights())
    result = dict(history=history, replicas=strategy.num_replicas_in_sync,
                  wall_seconds=time.perf_counter() - start, steps_per_epoch=steps)
    if cluster is None or cluster.is_chief:
        if args.export_dir:
            result["export"] = export_copy(model, shape, classes, args.export_dir)
        with open(os.path.join(args.run_dir, "result.json"), "w") as handle:
            json.dump(result, handle, indent=1)
    return result


def export_copy(model, image_shape, num_classes, export_dir):
    """Exports a copy of `model` built outside the strategy (plain variables) as a
    SavedModel in `export_dir/1`; returns that path. Chief only."""
    copy = build_model(image_shape, num_classes)  # called outside strategy.scope()
    copy.set_weights(model.get_weights())
    path = os.path.join(export_dir, "1")
    copy.export(path, format="tf_saved_model", verbose=False)
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    from pipelines.distributed.cluster import restart_process
    from pipelines.distributed.loop import PeerLostError

    def log(line):
        print(line, flush=True)  # workers' logs are often files: show progress as it comes

    try:
        _check(args)
        run(args, log=log)
    except PeerLostError as err:
        restart_process(str(err), log=log)
        return 1
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
