"""Multi-worker training on loopback: TF_CONFIG checks, the custom loop, two real
worker processes (correctness against one process, fault tolerance) and bad input.

The slow tests start `python -m pipelines.distributed.demo` (a tiny ViT on the
embedded digits with the training recipe) once per worker with its TF_CONFIG,
on free ports of 127.0.0.1, each with a bounded timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines.distributed.cluster import (
    ClusterError,
    parse_tf_config,
    read_tf_config,
    worker_temp_dir,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420  # seconds per worker process (2 shared CPU cores)
#: Two workers sum float32 gradients in another order than one process; Adam
#: divides by sqrt(v), so round-off grows a little. Measured: 1.1e-4 after 70 steps.
WEIGHT_TOLERANCE = 2e-3
LOSS_RTOL = 1e-3
PROG_ERROR = "python -m pipelines.distributed.demo: error:"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def demo_command(run_dir, *args):
    return [sys.executable, "-m", "pipelines.distributed.demo", "--run-dir", str(run_dir),
            *map(str, args)]


def start(command, config=None, log=None):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    if config is not None:
        env["TF_CONFIG"] = config
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=TIMEOUT):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"process timed out: {output[-3000:]}")
    return process.returncode, output or ""


def run_workers(run_dir, *args, workers=2, tmp_path=None):
    ports = [free_port() for _ in range(workers)]
    processes = [start(demo_command(run_dir, "--distribute", "multi_worker", *args,
                                    "--weights-out", tmp_path / f"w{i}.npz"),
                       tf_config(ports, i)) for i in range(workers)]
    return ports, [finish(p) for p in processes]


# ------------------------------------------------------------------ TF_CONFIG


def test_parse_tf_config_names_chief_and_peers():
    cluster = parse_tf_config(tf_config([1111, 2222], 1))
    assert (cluster.task_type, cluster.task_index, cluster.num_workers) == ("worker", 1, 2)
    assert not cluster.is_chief and cluster.address == "127.0.0.1:2222"
    assert cluster.peers == ["127.0.0.1:1111"]
    with_chief = parse_tf_config(json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w:2"]},
                                             "task": {"type": "chief", "index": 0}}))
    assert with_chief.is_chief and with_chief.num_workers == 2


@pytest.mark.parametrize("text, named", [
    ("{not json", "{not json"),
    ('{"cluster": {"worker": ["h:1"]}}', "'task'"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
     "index 2 is out of range"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": -1}}', "-1"),
    ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}', "'h'"),
    ('{"cluster": {"worker": ["h:99999"]}, "task": {"type": "worker", "index": 0}}', "99999"),
    ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "'ps'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', "'chief'"),
    ('{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}', "twice"),
])
def test_bad_tf_config_is_one_clear_error(text, named):
    with pytest.raises(ClusterError, match="TF_CONFIG") as error:
        parse_tf_config(text)
    assert named in str(error.value)


def test_missing_tf_config_and_worker_temp_dirs(tmp_path):
    with pytest.raises(ClusterError, match="TF_CONFIG environment variable"):
        read_tf_config({})
    first, second = (parse_tf_config(tf_config([1, 2], i)) for i in (0, 1))
    assert worker_temp_dir(tmp_path, second) == worker_temp_dir(str(tmp_path), second)
    assert worker_temp_dir(tmp_path, first) != worker_temp_dir(tmp_path, second)
    assert worker_temp_dir(tmp_path / "a", second) != worker_temp_dir(tmp_path / "b", second)


# ------------------------------------------------------------ strategy names


def test_make_strategy_rejects_bad_arguments():
    from pipelines.distribute import make_strategy

    with pytest.raises(ValueError, match="'gpus'"):
        make_strategy("gpus")
    with pytest.raises(ValueError, match="--tpu 'my-tpu' needs --distribute tpu"):
        make_strategy("mirrored", tpu="my-tpu")
    with pytest.raises(ValueError, match="startup_timeout"):
        make_strategy("none", startup_timeout=5)


def test_tpu_strategy_fails_clearly_without_a_tpu(monkeypatch):
    from pipelines.distributed.tpu import make_tpu_strategy

    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ValueError, match="--tpu ''"):
        make_tpu_strategy("")
    with pytest.raises(ValueError, match="no TPU reachable with --tpu None"):
        make_tpu_strategy(None)
    closed = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=f"nothing answers at {closed}"):
        make_tpu_strategy(closed, connect_timeout=1)


@pytest.mark.slow
def test_tpu_local_without_tpu_fails_clearly():
    code = ("from pipelines.distribute import make_strategy\n"
            "try:\n    make_strategy('tpu', tpu='local')\n"
            "except ValueError as e:\n    print('ERROR', e)\n")
    returncode, output = finish(start([sys.executable, "-c", code]), timeout=180)
    assert returncode == 0 and "ERROR --distribute tpu: no TPU reachable with --tpu 'local'" in output


# ------------------------------------------------------------ the loop itself


@pytest.mark.slow
def test_fit_distributed_matches_keras_fit_and_writes_the_run_folder(tmp_path):
    """One replica: the loop's update is Keras' own (`fit` is the reference)."""
    import keras
    import tensorflow as tf

    from pipelines.distributed import demo, fit_distributed

    (x, y), (x_val, y_val) = demo.digits_arrays()
    x, y, x_val, y_val = x[:256], y[:256], x_val[:64], y_val[:64]
    one_hot = lambda a, b: (a, tf.one_hot(b, 10))
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=True).map(one_hot)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(32).map(one_hot)
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        model = demo.build_model((8, 8, 1), 10)
        models.append((model, *demo.training_recipe(3e-3, 2 * 8)))
    (ours, optimizer, loss), (reference, ref_optimizer, ref_loss) = models
    history = fit_distributed(ours, optimizer, loss, train, val, epochs=2,
                              run_dir=str(tmp_path / "run"), log=lambda line: None)
    reference.compile(ref_optimizer, ref_loss, metrics=["accuracy"], jit_compile=False)
    expected = reference.fit(train, validation_data=val, epochs=2, verbose=0).history
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-4, err_msg=key)
    assert history["epoch"] == [0, 1] and history["start_epoch"] == 0
    assert sorted(os.listdir(tmp_path / "run")) == ["best.weights.h5", "history.csv",
                                                    "history.json", "tensorboard"]


# -------------------------------------------------------- two worker processes


@pytest.mark.slow
def test_two_workers_match_one_process_and_write_one_set_of_artifacts(tmp_path):
    args = ("--epochs", 2, "--batch-size", 32, "--steps-per-epoch", 12, "--seed", 3)
    single = finish(start(demo_command(tmp_path / "single", *args, "--weights-out",
                                       tmp_path / "single.npz")))
    assert single[0] == 0, single[1][-3000:]
    ports, results = run_workers(tmp_path / "multi", *args, "--export-dir",
                                 tmp_path / "export", tmp_path=tmp_path)
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    workers = [np.load(tmp_path / f"w{i}.npz") for i in (0, 1)]
    expected = np.load(tmp_path / "single.npz")
    for key in expected:
        np.testing.assert_array_equal(workers[0][key], workers[1][key])
        np.testing.assert_allclose(workers[0][key], expected[key], atol=WEIGHT_TOLERANCE)
    multi = json.loads((tmp_path / "multi" / "result.json").read_text())
    alone = json.loads((tmp_path / "single" / "result.json").read_text())
    assert multi["replicas"] == 2 and alone["replicas"] == 1
    np.testing.assert_allclose(multi["history"]["loss"], alone["history"]["loss"], rtol=LOSS_RTOL)
    assert sorted(os.listdir(tmp_path / "multi")) == sorted(os.listdir(tmp_path / "single"))
    assert os.listdir(tmp_path / "export") == ["1"]
    assert os.path.exists(tmp_path / "export" / "1" / "saved_model.pb")
    second = parse_tf_config(tf_config(ports, 1))
    assert not os.path.exists(worker_temp_dir(tmp_path / "multi", second))


@pytest.mark.slow
def test_killed_worker_restarts_and_the_cluster_resumes(tmp_path):
    run_dir = tmp_path / "run"
    ports = [free_port(), free_port()]
    command = demo_command(run_dir, "--distribute", "multi_worker", "--epochs", 4,
                           "--batch-size", 32, "--steps-per-epoch", 12, "--startup-timeout", 180)
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in (0, 1)]  # noqa: SIM115 -- children write them
    chief = start(command, tf_config(ports, 0), logs[0])
    worker = start(command, tf_config(ports, 1), logs[1])
    deadline = time.monotonic() + TIMEOUT
    while not (run_dir / "backup" / "checkpoint").exists():
        assert time.monotonic() < deadline and chief.poll() is None, "no backup was written"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    restarted = start(command, tf_config(ports, 1), logs[1])
    assert finish(chief)[0] == 0, (tmp_path / "log0.txt").read_text()[-3000:]
    assert finish(restarted)[0] == 0, (tmp_path / "log1.txt").read_text()[-3000:]
    for log in logs:
        log.close()
    result = json.loads((run_dir / "result.json").read_text())
    history = result["history"]
    assert history["epoch"] == list(range(4))
    assert 1 <= history["start_epoch"] < 4, "the kill came too late to test a resume"
    assert len(history["loss"]) == 4 and all(np.isfinite(history["loss"]))
    csv_epochs = [line.split(",")[0] for line in
                  (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert csv_epochs == [str(e) for e in range(4)]
    assert "restarting this worker" in (tmp_path / "log0.txt").read_text()
    assert not (run_dir / "backup").exists()


# ------------------------------------------------------------------ bad input


@pytest.mark.slow
@pytest.mark.parametrize("config, named", [
    ("{oops", "TF_CONFIG is not valid JSON"),
    (tf_config([1, 2], 5), "TF_CONFIG task index 5 is out of range"),
])
def test_bad_tf_config_fails_before_writing(tmp_path, config, named):
    returncode, output = finish(start(demo_command(tmp_path / "run", "--distribute",
                                                   "multi_worker"), config), timeout=120)
    errors = [line for line in output.splitlines() if line.startswith(PROG_ERROR)]
    assert returncode == 2 and len(errors) == 1 and named in errors[0], output[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_unreachable_peer_fails_after_the_startup_timeout(tmp_path):
    ports = [free_port(), free_port()]
    process = start(demo_command(tmp_path / "run", "--distribute", "multi_worker",
                                 "--startup-timeout", 5), tf_config(ports, 0))
    returncode, output = finish(process, timeout=120)
    errors = [line for line in output.splitlines() if line.startswith(PROG_ERROR)]
    assert returncode == 2 and len(errors) == 1, output[-2000:]
    assert f"127.0.0.1:{ports[1]} not reachable" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_batch_not_divisible_by_replicas(tmp_path):
    _, results = run_workers(tmp_path / "run", "--batch-size", 33, tmp_path=tmp_path)
    for returncode, output in results:
        errors = [line for line in output.splitlines() if line.startswith(PROG_ERROR)]
        assert returncode == 2 and len(errors) == 1, output[-2000:]
        assert "--batch-size 33" in errors[0] and "2 replicas" in errors[0]
    assert not (tmp_path / "run").exists()
