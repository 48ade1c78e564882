"""tf.data service: address checks, and `keras-vit data-service dispatcher|worker`
on loopback serving a dataset and a training run."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines import data_service
from pipelines.data_service import check_address, check_dispatcher, distribute_through_service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("address, expected", [
    ("localhost:5000", "grpc://localhost:5000"),
    ("grpc://10.0.0.7:80", "grpc://10.0.0.7:80"),
    ("grpc://[::1]:5050", "grpc://[::1]:5050"),
])
def test_check_address_accepts_host_port(address, expected):
    assert check_address(address) == expected


@pytest.mark.parametrize("address", ["localhost", "grpc://host:0", "host:70000", "http://h:1",
                                     "", None, "a b:1"])
def test_check_address_names_a_bad_value(address):
    with pytest.raises(ValueError, match=f"--data-service {address!r}: expected grpc://HOST:PORT"):
        check_address(address)


def test_distribute_through_service_rejects_bad_mode():
    import tensorflow as tf

    with pytest.raises(ValueError, match="processing_mode='everything'"):
        distribute_through_service(tf.data.Dataset.range(3), "localhost:1",
                                   processing_mode="everything")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_dispatcher_fails_within_the_time_limit(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(data_service, "DISPATCHER_TIMEOUT_S", 1)
    address = f"grpc://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"--data-service: tf.data service dispatcher at "
                                         f"{address} is not reachable after 1 s"):
        distribute_through_service(tf.data.Dataset.range(3), address)
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="is not reachable after 0.5 s"):
        check_dispatcher(address[len("grpc://"):], timeout=0.5)


def test_train_with_no_dispatcher_is_one_line_before_training(monkeypatch, tmp_path, capsys,
                                                             digits_data_dir):
    """`keras-vit train --data-service` with nothing listening: one error line, exit 2,
    no run folder (was: a hang after the model was built)."""
    import keras

    from pipelines.train import main

    monkeypatch.setattr(data_service, "DISPATCHER_TIMEOUT_S", 1)
    address = f"grpc://127.0.0.1:{free_port()}"
    policy = keras.config.dtype_policy()
    start = time.monotonic()
    try:
        code = main(["--data-service", address, "--epochs", "1", "--batch-size", "128",
                     "--variant", "Ti/2", "--hidden-dim", "16", "--depth", "1", "--num-heads",
                     "2", "--mlp-dim", "32", "--precision", "float32", "--verbose", "0",
                     "--data-dir", digits_data_dir, "--no-export", "--no-baseline",
                     "--output-dir", str(tmp_path / "run")])
    finally:
        keras.config.set_dtype_policy(policy)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, captured.err[-2000:]
    assert errors[0].startswith("keras-vit train: error: ")
    assert f"dispatcher at {address} is not reachable after 1 s" in errors[0]
    assert "model" not in captured.out
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - start < 60


def test_dispatcher_work_dir_that_cannot_be_created(tmp_path, capsys):
    """`dispatcher --work-dir` under /proc or a file: one line, exit 2 (was a
    RuntimeError traceback from TensorFlow)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for work_dir in ("/proc/nope", str(afile / "journal")):
        assert data_service.main(["dispatcher", "--port", str(free_port()),
                                  "--work-dir", work_dir]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"keras-vit data-service: error: --work-dir {work_dir!r}: cannot "
                              "create or write the journal folder"), err
        assert len(err.splitlines()) == 1
    assert not os.path.exists("/proc/nope") and os.listdir(tmp_path) == ["afile"]


def test_dispatcher_or_worker_on_a_busy_port_is_refused(tmp_path, capsys):
    """A second dispatcher (or a worker) on a port another server listens on: one
    line, exit 2 (TensorFlow's gRPC server binds with SO_REUSEPORT and started it)."""
    with running_service(tmp_path / "journal") as (_, port):
        for role in (["dispatcher"], ["worker", "--dispatcher", f"localhost:{port}"]):
            assert data_service.main([*role, "--port", str(port)]) == 2
            err = capsys.readouterr().err
            assert err == (f"keras-vit data-service: error: --port {port}: cannot serve on "
                           "this port (another process listens on it); expected a free TCP "
                           "port\n"), err
    # Free again once the service has stopped (TIME_WAIT connections do not count).
    data_service.check_port_free(port)


def test_worker_says_it_waits_for_its_dispatcher(tmp_path):
    """`worker --dispatcher` with no dispatcher there: one line saying it waits (was
    silent), then it registers once the dispatcher comes up."""
    port = free_port()
    worker = start("data-service", "worker", "--dispatcher", f"127.0.0.1:{port}",
                   "--port", 0)
    dispatcher = None
    try:
        wait_for_line(worker, f"waiting for the tf.data service dispatcher at "
                              f"grpc://127.0.0.1:{port}", timeout=120)
        dispatcher = start_dispatcher(port, tmp_path / "journal")
        wait_for_line(worker, "tf.data service worker at localhost:", timeout=120)
    finally:
        for process in (worker, dispatcher):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def start(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *map(str, args)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_line(process, text, timeout=120):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if text in line:
            return line
        if not line and process.poll() is not None:
            break
    pytest.fail(f"no {text!r} from the service: {''.join(lines)[-2000:]}")


def start_dispatcher(port, journal):
    """`keras-vit data-service dispatcher` on `port` with its journal, once it listens."""
    dispatcher = start("data-service", "dispatcher", "--port", port, "--work-dir", journal)
    wait_for_line(dispatcher, f"dispatcher at grpc://localhost:{port}")
    return dispatcher


@contextlib.contextmanager
def running_service(journal):
    """A dispatcher (journal in `journal`) and one worker on loopback; yields the
    process list (dispatcher first: a test may replace it) and the port."""
    port = free_port()
    processes = []
    try:
        processes.append(start_dispatcher(port, journal))
        worker = start("data-service", "worker", "--dispatcher", f"localhost:{port}",
                       "--port", 0, "--worker-address", "localhost:%port%")
        processes.append(worker)
        wait_for_line(worker, "tf.data service worker at localhost:")
        yield processes, port
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A dispatcher (with a journal folder) and one worker on loopback."""
    with running_service(tmp_path_factory.mktemp("journal")) as (_, port):
        yield f"grpc://localhost:{port}"


@pytest.mark.slow
def test_dataset_read_through_the_service_is_the_local_one(service):
    import tensorflow as tf

    local = tf.data.Dataset.range(50).map(lambda x: (x * 3, tf.cast(x % 7, tf.int32))).batch(8)
    remote = distribute_through_service(local, service)
    assert int(remote.cardinality()) == 7
    got = [(a.numpy().tolist(), b.numpy().tolist()) for a, b in remote]
    assert got == [(a.numpy().tolist(), b.numpy().tolist()) for a, b in local]


@pytest.mark.slow
def test_keras_vit_train_reads_its_batches_from_the_service(service, tmp_path, capsys,
                                                            digits_data_dir):
    """`keras-vit train --data-service`: the training pipeline runs on the service."""
    import keras

    from pipelines.train import main

    policy = keras.config.dtype_policy()
    try:
        code = main(["--data-service", service, "--epochs", "2", "--batch-size", "128",
                     "--variant", "Ti/2", "--hidden-dim", "16", "--depth", "1", "--num-heads",
                     "2", "--mlp-dim", "32", "--precision", "float32", "--verbose", "0",
                     "--data-dir", digits_data_dir, "--no-export", "--no-baseline",
                     "--tta-shift", "0", "--output-dir", str(tmp_path / "run")])
    finally:
        keras.config.set_dtype_policy(policy)
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    assert "8 steps per epoch of 128 images" in printed  # 1149 // 128
    assert f"batched by the tf.data service at {service}" in printed
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["epoch"] == [0, 1] and all(np.isfinite(history["loss"]))
    assert history["loss"][1] < history["loss"][0]


@pytest.mark.slow
def test_dispatcher_with_a_work_dir_survives_a_restart_mid_iteration(tmp_path):
    """`dispatcher --work-dir`: a restarted dispatcher recovers its journal, and an
    iteration begun before the restart finishes with every element once."""
    import tensorflow as tf

    journal = tmp_path / "journal"
    local = tf.data.Dataset.range(40).batch(4)
    with running_service(journal) as (processes, port):
        iterator = iter(distribute_through_service(local, f"grpc://localhost:{port}"))
        seen = [next(iterator).numpy().tolist() for _ in range(3)]
        assert any(journal.rglob("*")), "the dispatcher wrote no journal"
        processes[0].terminate()
        assert processes[0].wait(timeout=30) == 0
        processes[0] = start_dispatcher(port, journal)
        seen += [batch.numpy().tolist() for batch in iterator]
    assert seen == [batch.numpy().tolist() for batch in local]
