"""The two ViT-Ti/16 models every ViT benchmark compares, built and compiled alike.

Ours: `keras_vit.models.vision_transformer("Ti/16", ...)`. Peer:
`keras_hub.models.ViTImageClassifier(ViTBackbone(...), preprocessor=None)` at
the same configuration (12 blocks, width 192, 3 heads, MLP 768, class-token
pooling, learned position embedding, float32 logits).

Example:
    >>> ours, peer = build_pair("float32", depth=2)
    >>> compile_for_benchmark(ours, jit_compile=False)
"""

IMAGE_SHAPE = (224, 224, 3)
NUM_CLASSES = 1000
TI16 = dict(patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
QUICK_DEPTH = 2  # --quick: 2 encoder blocks instead of 12, so tracing stays short
SIDES = ("ours", "keras_hub")


def build_ours(depth=TI16["num_layers"], image_shape=IMAGE_SHAPE):
    """Our ViT-Ti/16 (with `depth` encoder blocks) under the current global dtype policy."""
    from keras_vit.models import vision_transformer

    return vision_transformer("Ti/16", image_shape=image_shape, num_classes=NUM_CLASSES,
                              depth=depth)


def build_peer(depth=TI16["num_layers"], image_shape=IMAGE_SHAPE):
    """keras-hub's ViT at the same configuration, under the current global dtype policy."""
    import keras_hub

    config = dict(TI16, num_layers=depth)
    backbone = keras_hub.models.ViTBackbone(image_shape=image_shape, **config)
    # preprocessor=None: raw tensors in; head_dtype float32: logits in float32 like ours.
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=NUM_CLASSES,
                                               preprocessor=None, activation=None,
                                               head_dtype="float32", compile=False)


def build(side, policy, depth=TI16["num_layers"], image_shape=IMAGE_SHAPE):
    """Builds `side` ("ours" or "keras_hub") under the global dtype `policy`, then restores float32.

    Example:
        >>> model = build("keras_hub", "mixed_bfloat16", depth=2)
    """
    import keras

    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}; received {side!r}")
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        builder = build_ours if side == "ours" else build_peer
        return builder(depth, image_shape)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def build_pair(policy, depth=TI16["num_layers"], image_shape=IMAGE_SHAPE):
    """`(ours, keras_hub)` built under the global dtype `policy`."""
    return build("ours", policy, depth, image_shape), build("keras_hub", policy, depth,
                                                             image_shape)


def compile_for_benchmark(model, jit_compile):
    """AdamW, sparse cross-entropy from logits, no metrics; `jit_compile` True for XLA."""
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[], jit_compile=jit_compile)
    # Optimizer slots now, not in the first step: tf.function then traces the
    # train step once instead of twice (warm-up only; timed steps are alike).
    model.optimizer.build(model.trainable_variables)
    return model


def random_batch(batch, image_shape=IMAGE_SHAPE, seed=0):
    """`(images, labels)` constant tensors: pixels uniform in [0, 255], int32 labels."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (batch,) + tuple(image_shape)).astype("float32"))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch,)).astype("int32"))
    return images, labels
