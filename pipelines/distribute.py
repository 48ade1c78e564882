"""`tf.distribute` strategies for the jobs, chosen by name.

Create the strategy FIRST in a job, before any TensorFlow op runs: a
`MultiWorkerMirroredStrategy` cannot be configured once TensorFlow has started
(and a TPU system must be initialised before ops are placed).
"""

STRATEGIES = ("none", "mirrored", "multi_worker", "tpu")


def make_strategy(name="none", *, tpu=None, startup_timeout=None):
    """The `tf.distribute.Strategy` a job builds and trains its model under.

    Args:
        name: `"none"` (TensorFlow's default strategy: one device), `"mirrored"`
            (synchronous data parallelism over this machine's GPUs, or its CPU),
            `"multi_worker"` (synchronous over the processes listed in the
            `TF_CONFIG` environment variable; see `pipelines.distributed.cluster`)
            or `"tpu"` (`TPUStrategy` on the TPU named by `tpu`).
        tpu: only with `"tpu"`: the TPU name or `grpc://` address given to
            `TPUClusterResolver`; None: the TPU of this VM (Cloud TPU VM, or the
            `TPU_NAME` environment variable).
        startup_timeout: only with `"multi_worker"`: seconds to wait for all
            workers (default `cluster.DEFAULT_STARTUP_TIMEOUT`).

    Returns:
        A `tf.distribute.Strategy`. Train multi-worker and TPU strategies with
        `pipelines.distributed.fit_distributed`; Keras 3 `fit` does not run
        under `MultiWorkerMirroredStrategy`.

    Raises:
        ValueError: unknown name, `tpu` without `"tpu"`, bad TF_CONFIG,
            unreachable peers or no reachable TPU (naming the value).

    Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = vision_transformer("Ti/16", num_classes=10)
    """
    if name not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {STRATEGIES}; received {name!r}")
    if tpu is not None and name != "tpu":
        raise ValueError(f"--tpu {tpu!r} needs --distribute tpu; received --distribute {name!r}")
    if startup_timeout is not None and name != "multi_worker":
        raise ValueError(f"startup_timeout={startup_timeout!r} only applies to --distribute "
                         f"multi_worker; received {name!r}")
    if name == "multi_worker":
        from pipelines.distributed.cluster import (
            DEFAULT_STARTUP_TIMEOUT,
            create_multi_worker_strategy,
        )

        strategy, _ = create_multi_worker_strategy(
            startup_timeout=startup_timeout or DEFAULT_STARTUP_TIMEOUT)
        return strategy
    if name == "tpu":
        from pipelines.distributed.tpu import make_tpu_strategy

        return make_tpu_strategy(tpu)
    import tensorflow as tf  # here, so the CLIs read STRATEGIES without loading TF

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
