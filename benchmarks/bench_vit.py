"""ViT-Ti/16 at 224x224, 1000 classes: `keras_vit` against keras-hub's ViT.

Ours: `keras_vit.models.vision_transformer("Ti/16", ...)`. Peer:
`keras_hub.models.ViTImageClassifier(ViTBackbone(...), preprocessor=None)` at
the same configuration (12 blocks, width 192, 3 heads, MLP 768, class-token
pooling, learned position embedding, float32 logits). Both models come from the
same global dtype policy (float32, then mixed_bfloat16) and are compiled alike
(AdamW, sparse categorical cross-entropy from logits, no metrics).

For each precision it measures, interleaving ours and keras-hub step by step:

- train: images/s of `model.train_on_batch(images, labels)`;
- infer: images/s of `model.predict_on_batch(images)`;

with the compiled step as a plain graph (`jit_compile=False`) and, with
`--xla`, under XLA as well (Keras' "auto" picks XLA for both on TensorFlow).
Reported ratio: ours images/s / keras-hub images/s (>= 1: ours at least as fast).
"""

from benchmarks import common

IMAGE_SHAPE = (224, 224, 3)
NUM_CLASSES = 1000
TI16 = dict(patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
PRECISIONS = ("float32", "mixed_bfloat16")


QUICK_DEPTH = 2  # --quick: 2 encoder blocks instead of 12, so tracing stays short


def _build_ours(depth):
    from keras_vit.models import vision_transformer

    return vision_transformer("Ti/16", image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES,
                              depth=depth)


def _build_peer(depth):
    import keras_hub

    config = dict(TI16, num_layers=depth)
    backbone = keras_hub.models.ViTBackbone(image_shape=IMAGE_SHAPE, **config)
    # preprocessor=None: raw tensors in; head_dtype float32: logits in float32 like ours.
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=NUM_CLASSES,
                                               preprocessor=None, activation=None,
                                               head_dtype="float32", compile=False)


def _compile(model, jit_compile):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[], jit_compile=jit_compile)
    # Optimizer slots now, not in the first step: tf.function then traces the
    # train step once instead of twice (warm-up only; timed steps are alike).
    model.optimizer.build(model.trainable_variables)


def _build(policy, depth=TI16["num_layers"]):
    """Builds both models under the global dtype `policy`, then restores float32."""
    import keras

    keras.mixed_precision.set_dtype_policy(policy)
    try:
        return _build_ours(depth), _build_peer(depth)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def run(quick=False, repeats=None, tolerance=common.TOLERANCE, xla=False):
    """Runs the ViT benchmark, prints its table, writes `runs/bench/vit.json`.

    Returns:
        `(passed, clearly_slower)`, see `common.verdict`.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    batch = 8 if quick else 32
    depth = QUICK_DEPTH if quick else TI16["num_layers"]
    timing = dict(min_pairs=repeats or (3 if quick else 5), warmup=1 if quick else 2,
                  min_time=0.5 if quick else 4.0)
    compilers = ("graph", "xla") if xla else ("graph",)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch,) + IMAGE_SHAPE).astype("float32"))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch,)).astype("int32"))
    print(f"\n== vit: keras_vit vision_transformer('Ti/16') vs keras_hub ViTImageClassifier"
          f"\n   {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, {NUM_CLASSES} classes, {depth} blocks"
          f"{' (quick: fewer than Ti/16 has)' if quick else ''}, batch {batch}; "
          f">= {timing['min_pairs']} interleaved step pairs and >= {timing['min_time']} s a side,"
          f" medians;\n   ratio = ours images/s / keras-hub images/s (>= 1: ours at least "
          f"as fast)")
    rows, records, results, params = [], [], [], {}
    with common.Stopwatch() as total:
        for policy in PRECISIONS:
            for compiler in compilers:
                with common.Stopwatch() as build:
                    ours, peer = _build(policy, depth)
                    for model in (ours, peer):
                        _compile(model, compiler == "xla")
                params[policy] = dict(ours=ours.count_params(), keras_hub=peer.count_params())
                tasks = {
                    "train": lambda m: m.train_on_batch(images, labels),
                    "infer": lambda m: m.predict_on_batch(images),
                }
                for task, step in tasks.items():
                    record = dict(precision=policy, compiler=compiler, task=task, batch=batch)
                    try:
                        result = common.compare(lambda: step(ours), lambda: step(peer), **timing)
                    except Exception as error:
                        record["error"] = f"{type(error).__name__}: {error}"[:500]
                        rows.append([policy, compiler, task, batch] + ["n/a"] * 5)
                        records.append(record)
                        continue
                    record.update(result.to_dict(), ours_images_per_s=batch / result.ours_s,
                                  keras_hub_images_per_s=batch / result.peer_s)
                    results.append(result)
                    rows.append([policy, compiler, task, batch, f"{batch / result.ours_s:.1f}",
                                 f"{batch / result.peer_s:.1f}", common.ratio_cell(result),
                                 f"{result.cpu_ratio:.3f}",
                                 f"{result.ours_first_s:.0f} / {result.peer_first_s:.0f}"])
                    records.append(record)
                    print("   " + " | ".join(str(c) for c in rows[-1])
                          + f"   (build+compile {build.seconds:.0f} s)", flush=True)
                del ours, peer
                keras.backend.clear_session()
    headers = ["precision", "compile", "task", "batch", "ours img/s", "keras-hub img/s",
               "ours/keras-hub", "cpu o/k", "1st call s o/k"]
    passed, clearly_slower, text = common.verdict(results, tolerance,
                                                  what="ours/keras-hub ratio")
    print()
    for policy, counts in params.items():
        print(f"parameters ({policy}): ours {counts['ours']:,}, "
              f"keras-hub {counts['keras_hub']:,}")
    print(common.format_table(headers, rows))
    print(f"verdict: {text}")
    print(f"({common.load_note()}; {total.seconds:.0f} s)")
    path = common.write_results("vit", dict(
        quick=quick, tolerance=tolerance, passed=passed, clearly_slower=clearly_slower,
        verdict=text,
        config=dict(image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, batch=batch, timing=timing,
                    **dict(TI16, num_layers=depth)),
        parameters=params, results=records, seconds=total.seconds))
    print(f"results: {path.relative_to(common.REPO_ROOT)}")
    return passed, clearly_slower
