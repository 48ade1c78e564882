"""`TPUStrategy` from a TPU name, with clear errors where there is no TPU.

Untested on real TPUs (none is available to this project's tests): what is
tested is the argument handling and that every "no TPU" case fails fast with
one line naming the value, instead of TensorFlow's hang on an unreachable
`grpc://` address.

Example:
    >>> strategy = make_tpu_strategy("my-tpu")        # Cloud TPU by name
    >>> strategy = make_tpu_strategy("local")         # TPU VM
"""

from pipelines.distributed.cluster import unreachable_peers

#: Seconds to wait for a TCP connection to a `grpc://` TPU address.
CONNECT_TIMEOUT = 10.0


def make_tpu_strategy(tpu=None, *, connect_timeout=CONNECT_TIMEOUT):
    """Connects to a TPU system, initialises it and returns a `TPUStrategy`.

    Args:
        tpu: a Cloud TPU name, a `grpc://host:port` address, `"local"` (the TPU of
            this TPU VM) or None (TensorFlow's default: the `TPU_NAME`
            environment variable or the VM's metadata).
        connect_timeout: seconds to wait for a `grpc://` address to answer.

    Returns:
        A `tf.distribute.TPUStrategy`.

    Raises:
        ValueError: `tpu` is not a non-empty string or None, or no TPU is
            reachable (the message names `tpu` and TensorFlow's reason).

    Example:
        >>> make_tpu_strategy("grpc://10.0.0.2:8470").num_replicas_in_sync  # doctest: +SKIP
        8
    """
    if tpu is not None and (not isinstance(tpu, str) or not tpu.strip()):
        raise ValueError(f"--tpu {tpu!r}: expected a TPU name, grpc://HOST:PORT or 'local'")
    import tensorflow as tf

    def no_tpu(reason):
        return ValueError(f"--distribute tpu: no TPU reachable with --tpu {tpu!r}: {reason}")

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except Exception as err:  # noqa: BLE001 -- ValueError, URLError, ... by environment
        raise no_tpu(f"{type(err).__name__}: {err}") from None
    master = resolver.master()
    if master.startswith("grpc://") and unreachable_peers([master[len("grpc://"):]],
                                                          timeout=connect_timeout):
        # TensorFlow would wait forever for an address nobody listens on.
        raise no_tpu(f"nothing answers at {master} within {connect_timeout:g} s")
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, RuntimeError, ValueError) as err:
        raise no_tpu(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    return tf.distribute.TPUStrategy(resolver)
