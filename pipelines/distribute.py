"""`tf.distribute` strategies for the jobs, chosen by name."""


STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(name="none"):
    """The `tf.distribute.Strategy` a job builds and trains its model under.

    Args:
        name: `"none"` (TensorFlow's default strategy: one device), `"mirrored"`
            (synchronous data parallelism over this machine's GPUs, or its CPU),
            or `"multi_worker"` (synchronous over the machines listed in the
            `TF_CONFIG` environment variable).

    Returns:
        A `tf.distribute.Strategy`; Keras models built and compiled inside its
        `scope()` train under it with plain `fit`.

    Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = vision_transformer("Ti/16", num_classes=10)
    """
    if name not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {STRATEGIES}; received {name!r}")
    import tensorflow as tf  # here, so the CLIs read STRATEGIES without loading TF

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
