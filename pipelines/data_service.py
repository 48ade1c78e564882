"""tf.data service: input processing on other machines, and `keras-vit data-service`.

Decoding and augmentation can cost more CPU than the trainers have. A tf.data
service moves that work to separate processes: one dispatcher hands out the
work, any number of workers run the input pipeline, and the trainers only
receive finished batches over gRPC.

    keras-vit data-service dispatcher --port 5000
    keras-vit data-service worker --dispatcher localhost:5000 --port 5001   # x N
    keras-vit train ... --data-service grpc://localhost:5000

The dataset definition (its graph) travels from the trainer to the service;
functions in it must be TensorFlow ops (no Python `py_function`), which is
true of every pipeline in `pipelines.data` and `pipelines.records`.

Example:
    >>> train = distribute_through_service(data.train, "grpc://localhost:5000")
"""

import argparse
import errno
import os
import re
import signal
import socket
import sys
import time

PROG = "keras-vit data-service"
ADDRESS = re.compile(r"^(grpc://)?(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5})$")
#: "parallel_epochs": every trainer gets the whole dataset (the trainers'
#: distribution strategy then shards it); "distributed_epoch": the service
#: splits one epoch between trainers (each example once).
PROCESSING_MODES = ("parallel_epochs", "distributed_epoch")
#: Seconds a trainer waits for the dispatcher to answer before giving up (a
#: trainer that reads from a dispatcher that is not there would wait forever).
DISPATCHER_TIMEOUT_S = 20


def check_address(address, flag="--data-service"):
    """Validates `[grpc://]HOST:PORT`; returns it with the `grpc://` prefix.

    Example:
        >>> check_address("localhost:5000")
        'grpc://localhost:5000'
    """
    match = ADDRESS.match(address or "") if isinstance(address, str) else None
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{flag} {address!r}: expected grpc://HOST:PORT with a port in "
                         "1..65535")
    return f"grpc://{match['host']}:{match['port']}"


def _dispatcher_ready(address, timeout):
    """Whether a gRPC server answers at `address` (`grpc://HOST:PORT`) within `timeout` s."""
    import grpc

    channel = grpc.insecure_channel(address[len("grpc://"):])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def check_dispatcher(service, timeout=None, flag="--data-service"):
    """Validates the address and checks a dispatcher answers there; returns the address.

    Reading from a tf.data service whose dispatcher does not answer blocks
    forever inside TensorFlow; this fails within `timeout` seconds instead.

    Args:
        service: `[grpc://]HOST:PORT`.
        timeout: seconds to wait; None: `DISPATCHER_TIMEOUT_S`.
        flag: the flag named in the messages.

    Raises:
        ValueError: a malformed address, or nothing answers in time.

    Example:
        >>> check_dispatcher("localhost:5000")
        'grpc://localhost:5000'
    """
    service = check_address(service, flag)
    timeout = DISPATCHER_TIMEOUT_S if timeout is None else timeout
    if not _dispatcher_ready(service, timeout):
        raise ValueError(f"{flag}: tf.data service dispatcher at {service} is not reachable "
                         f"after {timeout:g} s: start it with `keras-vit data-service "
                         "dispatcher --port PORT` (and workers), or check the host and port")
    return service


def distribute_through_service(dataset, service, *, processing_mode="parallel_epochs",
                               job_name=None):
    """Runs `dataset`'s pipeline on a tf.data service instead of this process.

    Args:
        dataset: a `tf.data.Dataset` (e.g. decoded, augmented, batched train data).
        service: the dispatcher, `grpc://HOST:PORT`.
        processing_mode: one of `PROCESSING_MODES`.
        job_name: trainers with the same job name share one service job (each
            batch goes to one of them); None gives each trainer its own job.

    Returns:
        A `tf.data.Dataset` yielding the same elements (prefetched), produced by
        the service's workers. Its cardinality is the input's, so a training
        loop still knows its steps per epoch.

    Raises:
        ValueError: a malformed address or mode, or no dispatcher answers at
            `service` within `DISPATCHER_TIMEOUT_S` seconds.

    Example:
        >>> ds = distribute_through_service(ds, "grpc://dispatcher:5000")
    """
    import tensorflow as tf

    service = check_address(service)
    if processing_mode not in PROCESSING_MODES:
        raise ValueError(f"processing_mode={processing_mode!r}: expected one of "
                         f"{PROCESSING_MODES}")
    check_dispatcher(service)
    cardinality = dataset.cardinality()
    remote = dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=processing_mode, service=service, job_name=job_name))
    if processing_mode == "parallel_epochs" and cardinality >= 0:
        remote = remote.apply(tf.data.experimental.assert_cardinality(cardinality))
    return remote.prefetch(tf.data.AUTOTUNE)


def check_port_free(port, flag="--port"):
    """Raises ValueError when TCP `port` is taken by a listening process (0 is not checked).

    gRPC servers bind with SO_REUSEPORT, so TensorFlow starts a second
    dispatcher or worker on a port another one already serves, and the
    kernel then splits connections between the two. A plain IPv4 bind (with
    SO_REUSEADDR, so a port freed moments ago in TIME_WAIT still counts as
    free) fails on such a port; a server listening on IPv6 only is not seen.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as err:
            reason = ("another process listens on it" if err.errno == errno.EADDRINUSE
                      else err.strerror or str(err))
            raise ValueError(f"{flag} {port}: cannot serve on this port ({reason}); expected a "
                             "free TCP port") from None


def start_dispatcher(port, work_dir=None):
    """Starts a dispatcher on `port` (0: any free port); returns the server.

    Args:
        port: TCP port.
        work_dir: folder for the dispatcher's journal; with it, a restarted
            dispatcher recovers its state (fault-tolerant mode).

    Example:
        >>> server = start_dispatcher(5000)
        >>> server.target
        'grpc://localhost:5000'
    """
    if work_dir is not None:
        check_work_dir(work_dir)  # before TensorFlow fails on it with a traceback
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None)
    return tf.data.experimental.service.DispatchServer(config)


def check_work_dir(work_dir):
    """Creates the dispatcher's journal folder if needed and checks it takes files.

    Remote file systems (`gs://...`) are left to TensorFlow.

    Raises:
        ValueError: the folder cannot be created or written, naming it.
    """
    if "://" in work_dir:
        return
    probe = os.path.join(work_dir, f".keras-vit-write-check-{os.getpid()}")
    try:
        os.makedirs(work_dir, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"--work-dir {work_dir!r}: cannot create or write the journal folder "
                         f"({reason}): expected a writable folder") from None


def wait_for_dispatcher(dispatcher, log, poll_s=1.0):
    """Returns once a dispatcher answers at `dispatcher`; says once that it waits.

    Waiting here (in Python, interruptible) rather than inside TensorFlow's
    worker start-up, which blocks silently until the dispatcher is there.
    """
    service = check_address(dispatcher, "--dispatcher")
    if _dispatcher_ready(service, poll_s):
        return
    log(f"waiting for the tf.data service dispatcher at {service} (not reachable yet; "
        "Ctrl-C to stop)")
    while not _dispatcher_ready(service, poll_s):
        pass


def start_worker(dispatcher, port=0, worker_address=None):
    """Starts a worker that registers with `dispatcher`; returns the server.

    Args:
        dispatcher: `[grpc://]HOST:PORT` of the dispatcher.
        port: this worker's TCP port (0: any free port).
        worker_address: how the trainers reach this worker (`HOST:%port%`);
            default localhost, so set it on a multi-host cluster.

    Example:
        >>> server = start_worker("dispatcher:5000", port=5001)
    """
    import tensorflow as tf

    address = check_address(dispatcher, "--dispatcher")[len("grpc://"):]
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=address, port=port,
        worker_address=worker_address or "localhost:%port%")
    return tf.data.experimental.service.WorkerServer(config)


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run a tf.data service dispatcher or worker (serves input "
                               "pipelines to `keras-vit train --data-service`). Runs until "
                               "interrupted.")
    roles = parser.add_subparsers(dest="role", required=True)
    dispatcher = roles.add_parser("dispatcher", help="the service's coordinator")
    dispatcher.add_argument("--port", type=int, default=5000, help="TCP port")
    dispatcher.add_argument("--work-dir", help="journal folder (fault-tolerant restarts)")
    worker = roles.add_parser("worker", help="runs input pipelines")
    worker.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    worker.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    worker.add_argument("--worker-address",
                        help="HOST:%%port%% under which trainers reach this worker")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.port < 65536:
            raise ValueError(f"--port {args.port}: expected 0..65535")
        if args.role == "dispatcher":
            check_port_free(args.port)
            server = start_dispatcher(args.port, args.work_dir)
            print(f"tf.data service dispatcher at {server.target}", flush=True)
        else:
            check_port_free(args.port)  # now and again once the dispatcher answers
            wait_for_dispatcher(args.dispatcher,
                                lambda line: print(line, file=sys.stderr, flush=True))
            check_port_free(args.port)
            server = start_worker(args.dispatcher, args.port, args.worker_address)
            print(f"tf.data service worker at {server._address} for "
                  f"{args.dispatcher}", flush=True)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the worker waits for its dispatcher
        return 130
    # SIGTERM (docker stop, kubectl delete) ends the process like Ctrl-C. Waiting in
    # Python, not in server.join() (C++), lets the signal handlers run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
