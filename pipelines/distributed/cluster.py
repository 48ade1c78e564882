"""The cluster a multi-worker job runs in: `TF_CONFIG`, the chief, start-up order.

TensorFlow's `MultiWorkerMirroredStrategy` reads the cluster from the
`TF_CONFIG` environment variable, a JSON object such as::

    {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
     "task": {"type": "worker", "index": 0}}

This module validates it before TensorFlow sees it (a typo otherwise surfaces
as a gRPC error minutes later), names the chief (the `chief` task if the
cluster has one, else `worker` 0) and creates the strategy with bounded
waits. Three rules of TensorFlow it enforces:

* the strategy must be created before any TensorFlow op runs (collective ops
  are configured once, at program start-up), so a job calls
  `create_multi_worker_strategy` first, before reading data or seeding;
* every worker takes part in every collective (all-reduce, checkpoint save),
  so non-chief workers do the same work but write into a temporary folder
  (`worker_temp_dir`) that they remove: only the chief leaves artifacts;
* a worker whose peer died cannot recover in-process (collectives are
  aborted for good); it has to restart, which `fit_distributed` does.

Example:
    >>> cluster = parse_tf_config('{"cluster": {"worker": ["localhost:2222"]}, '
    ...                           '"task": {"type": "worker", "index": 0}}')
    >>> cluster.is_chief, cluster.num_workers
    (True, 1)
"""

import dataclasses
import hashlib
import json
import os
import socket
import tempfile
import time

#: Jobs MultiWorkerMirroredStrategy trains with (every task computes gradients).
TRAINING_JOBS = ("chief", "worker")
#: Seconds a worker waits for all peers at start-up before giving up.
DEFAULT_STARTUP_TIMEOUT = 120.0


class ClusterError(ValueError):
    """A bad `TF_CONFIG` or an unreachable cluster; the message names the value."""


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A validated `TF_CONFIG`.

    Attributes:
        cluster: job name -> list of "host:port" addresses.
        task_type: this process' job ("chief" or "worker").
        task_index: this process' index in its job.
    """

    cluster: dict
    task_type: str
    task_index: int

    @property
    def num_workers(self):
        """Processes that train (chief plus workers)."""
        return sum(len(self.cluster.get(job, ())) for job in TRAINING_JOBS)

    @property
    def chief(self):
        """(job, index) of the chief: the "chief" task, else worker 0."""
        return ("chief", 0) if self.cluster.get("chief") else ("worker", 0)

    @property
    def is_chief(self):
        return (self.task_type, self.task_index) == self.chief

    @property
    def address(self):
        return self.cluster[self.task_type][self.task_index]

    @property
    def peers(self):
        """Addresses of the other tasks."""
        return [
            address
            for job, addresses in self.cluster.items()
            for index, address in enumerate(addresses)
            if (job, index) != (self.task_type, self.task_index)
        ]


def parse_tf_config(text):
    """Validates a `TF_CONFIG` JSON string for multi-worker training.

    Args:
        text: the JSON text.

    Returns:
        A `ClusterConfig`.

    Raises:
        ClusterError: malformed JSON, missing "cluster"/"task", a job other than
            chief/worker, an address that is not "host:port", a task type not in
            the cluster or an index out of range; the message names the value.

    Example:
        >>> parse_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, '
        ...                 '"task": {"type": "worker", "index": 1}}').address
        'b:2'
    """
    try:
        config = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({err}): {text!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ClusterError(f"TF_CONFIG must be a JSON object with a 'cluster' object: {text!r}")
    cluster = {job: _check_job(job, addresses) for job, addresses in config["cluster"].items()}
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ClusterError(f"TF_CONFIG cluster has no 'worker' or 'chief' addresses: {text!r}")
    if len(cluster.get("chief", ())) > 1:
        raise ClusterError(f"TF_CONFIG cluster has {len(cluster['chief'])} chiefs; expected "
                           f"at most one: {cluster['chief']!r}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ClusterError(f"TF_CONFIG must have a 'task' object with 'type' and 'index' "
                           f"(this process' role): {text!r}")
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in cluster:
        raise ClusterError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                           f"{sorted(cluster)}")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ClusterError(f"TF_CONFIG task index {index!r} must be an integer (a JSON "
                           f"number, not a string): job {task_type!r} has "
                           f"{len(cluster[task_type])} task(s)")
    if not 0 <= index < len(cluster[task_type]):
        raise ClusterError(
            f"TF_CONFIG task index {index!r} is out of range: job {task_type!r} has "
            f"{len(cluster[task_type])} task(s), indices 0..{len(cluster[task_type]) - 1}")
    return ClusterConfig(cluster, task_type, index)


def _check_job(job, addresses):
    if job not in TRAINING_JOBS:
        raise ClusterError(f"TF_CONFIG job {job!r} is not supported by multi-worker training; "
                           f"expected jobs {TRAINING_JOBS}")
    if isinstance(addresses, str) or not isinstance(addresses, list) or not addresses:
        raise ClusterError(f"TF_CONFIG job {job!r} must list 'host:port' addresses; "
                           f"received {addresses!r}")
    for address in addresses:
        host, _, port = str(address).rpartition(":")
        if not isinstance(address, str) or not host or not port.isdigit() or not (
                0 < int(port) < 65536):
            raise ClusterError(f"TF_CONFIG address {address!r} of job {job!r} is not "
                               "'host:port' with a port in 1..65535")
    if len(set(addresses)) != len(addresses):
        raise ClusterError(f"TF_CONFIG job {job!r} lists an address twice: {addresses!r}")
    return list(addresses)


def read_tf_config(environ=None):
    """The `ClusterConfig` of the `TF_CONFIG` environment variable.

    Args:
        environ: mapping to read instead of `os.environ`.

    Returns:
        A `ClusterConfig`.

    Raises:
        ClusterError: TF_CONFIG is unset or invalid (see `parse_tf_config`).

    Example:
        >>> read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["h:1"]}, '
        ...                 '"task": {"type": "worker", "index": 0}}'}).num_workers
        1
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        raise ClusterError("--distribute multi_worker needs the TF_CONFIG environment variable "
                           "(cluster addresses and this process' task); it is not set")
    return parse_tf_config(text)


def worker_temp_dir(run_dir, cluster):
    """The folder a non-chief worker writes its (discarded) artifacts to.

    Deterministic per (run folder, task), so a restarted worker finds and
    clears what a killed one left behind.

    Args:
        run_dir: the run folder the chief writes.
        cluster: a `ClusterConfig`.

    Returns:
        A path under the system temporary folder.

    Example:
        >>> worker_temp_dir("runs/digits", cluster)  # doctest: +SKIP
        '/tmp/keras-vit-worker1-3f2a9c01de'
    """
    digest = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(),
                        f"keras-vit-{cluster.task_type}{cluster.task_index}-{digest}")


def unreachable_peers(addresses, timeout=1.0):
    """Addresses where nothing accepts a TCP connection within `timeout` seconds."""
    down = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except OSError:
            down.append(address)
    return down


def wait_for_cluster(cluster, timeout, poll=0.2):
    """Waits, before TensorFlow starts, until every peer of the cluster is up.

    TensorFlow's own set-up waits forever for an unreachable peer, inside C++
    that holds the interpreter lock (no Python thread or signal can end it).
    So the workers meet first in Python: each listens on its own TF_CONFIG
    port and connects to every peer's port; once all answered, it closes its
    listener and TensorFlow's server takes the port over. A peer that already
    runs TensorFlow answers on the same port.

    Args:
        cluster: a `ClusterConfig`.
        timeout: seconds to wait.
        poll: seconds between two rounds of connection attempts.

    Raises:
        ClusterError: this task's port is taken, or peers did not answer in
            time (naming them).

    Example:
        >>> wait_for_cluster(read_tf_config(), timeout=60)  # doctest: +SKIP
    """
    port = int(cluster.address.rpartition(":")[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(64)
    except OSError as err:
        listener.close()
        raise ClusterError(f"cannot listen on this task's address {cluster.address} "
                           f"(TF_CONFIG task {cluster.task_type}:{cluster.task_index}): "
                           f"{err.strerror or err}") from None
    deadline = time.monotonic() + timeout
    try:
        pending = list(cluster.peers)
        while pending:
            pending = unreachable_peers(pending, timeout=min(1.0, timeout))
            if pending and time.monotonic() > deadline:
                raise ClusterError(
                    f"peer(s) {', '.join(pending)} not reachable after {timeout:g} s "
                    "(startup timeout): start every worker of TF_CONFIG, check the "
                    "addresses and that the ports are open")
            if pending:
                time.sleep(poll)
    finally:
        listener.close()


def create_multi_worker_strategy(*, startup_timeout=DEFAULT_STARTUP_TIMEOUT,
                                 collective_timeout=None, environ=None):
    """Creates `MultiWorkerMirroredStrategy` for the cluster in `TF_CONFIG`.

    Call it first in the process, before any TensorFlow op (data loading,
    seeding with ops, model building).

    Args:
        startup_timeout: seconds to wait for every peer to start (> 0).
        collective_timeout: seconds one all-reduce may take before it fails
            (None: no limit; the health check still notices dead peers).
        environ: mapping to read TF_CONFIG from instead of `os.environ`
            (TensorFlow itself always reads `os.environ`).

    Returns:
        (strategy, ClusterConfig).

    Raises:
        ClusterError: bad TF_CONFIG, or peers not reachable within
            `startup_timeout` (naming them).
        RuntimeError: TensorFlow already ran ops in this process.

    Example:
        >>> strategy, cluster = create_multi_worker_strategy(startup_timeout=60)
        >>> strategy.num_replicas_in_sync  # doctest: +SKIP
        2
    """
    cluster = read_tf_config(environ)
    if not startup_timeout or startup_timeout <= 0:
        raise ClusterError(f"startup_timeout={startup_timeout!r}: expected seconds > 0")
    import tensorflow as tf
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=collective_timeout)
    wait_for_cluster(cluster, startup_timeout)
    start = time.monotonic()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as err:
        if "program startup" in str(err):
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow runs any op "
                "in this process (collective ops are configured at start-up): create the "
                "strategy first, then load data and build the model") from err
        if "Timeout waiting for the cluster" in str(err):
            down = unreachable_peers(cluster.peers) or cluster.peers
            raise ClusterError(
                f"peer(s) {', '.join(down)} not reachable after {time.monotonic() - start:.0f} "
                f"s (startup_timeout={startup_timeout}): start every worker of TF_CONFIG, "
                "check the addresses and that the ports are open") from None
        raise
    return strategy, cluster


#: Environment variable counting the restarts of this worker after a lost peer.
RESTARTS_VARIABLE = "KERAS_VIT_WORKER_RESTARTS"
MAX_RESTARTS = 3


def restart_process(reason, max_restarts=MAX_RESTARTS, log=print):
    """Replaces this process by a fresh run of the same command line.

    A worker whose peer died cannot run collectives again in this process
    (TensorFlow aborts them for good), so it re-executes itself: the new process
    creates the strategy, waits for the (restarted) peers and resumes from the
    chief's last backup. Counts restarts in `RESTARTS_VARIABLE` and gives up
    (returns) after `max_restarts`.

    Args:
        reason: text logged before restarting.
        max_restarts: restarts allowed for this worker.
        log: callable taking one line.

    Example:
        >>> try:
        ...     history = fit_distributed(...)
        ... except PeerLostError as err:
        ...     restart_process(str(err))  # returns only when out of restarts
    """
    import sys

    done = int(os.environ.get(RESTARTS_VARIABLE, "0"))
    if done >= max_restarts:
        log(f"{reason}; giving up after {done} restart(s)")
        return
    os.environ[RESTARTS_VARIABLE] = str(done + 1)
    log(f"{reason}; restarting this worker ({done + 1}/{max_restarts})")
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv is the exact interpreter command line (python -m ... included).
    os.execv(sys.executable, sys.orig_argv)
