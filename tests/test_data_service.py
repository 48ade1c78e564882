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

from pipelines.data_service import check_address, distribute_through_service

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
