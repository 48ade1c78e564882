"""Multi-worker training on loopback: TF_CONFIG checks, the custom loop, and
`keras-vit train --distribute multi_worker` in real worker processes
(correctness against one process, fault tolerance, bad input).

The slow tests start `python -m pipelines.train` (the `keras-vit train` job) once
per worker with its TF_CONFIG, on free ports of 127.0.0.1, with a tiny ViT on
the embedded digits and a bounded timeout per process.
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
TIMEOUT = 300  # seconds per worker process (2 shared CPU cores)
#: Two workers sum float32 gradients in another order than one process; Adam
#: divides by sqrt(v), so round-off grows a little. Measured (max |weight
#: difference|, tiny digits ViT): 4.0e-5 after 35 steps against `keras-vit train`
#: in one process (Keras fit), 1.6e-4 after 51 steps against the loop in one process.
WEIGHT_TOLERANCE = 2e-3
LOSS_RTOL = 1e-3
PROG_ERROR = "keras-vit train: error:"
#: `keras-vit train` flags of a tiny, fast run (the model of tests/test_train.py's tiny_flags).
TINY_RUN = ["--variant", "Ti/2", "--hidden-dim", "16", "--depth", "1", "--num-heads", "2",
            "--mlp-dim", "32", "--precision", "float32", "--no-xla", "--verbose", "0",
            "--tta-shift", "0", "--no-baseline", "--no-verify-export", "--deterministic"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def train_command(run_dir, *args):
    """`keras-vit train` (as `python -m pipelines.train`) with the tiny run's flags."""
    return [sys.executable, "-m", "pipelines.train", *TINY_RUN, "--output-dir", str(run_dir),
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
        pytest.fail(f"process timed out: {(output or '')[-3000:]}")
    return process.returncode, output or ""


def run_workers(run_dir, *args, workers=2):
    """Starts `workers` processes of the same `keras-vit train` command; (ports, results)."""
    ports = [free_port() for _ in range(workers)]
    processes = [start(train_command(run_dir, "--distribute", "multi_worker", *args),
                       tf_config(ports, i)) for i in range(workers)]
    return ports, [finish(p) for p in processes]


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith(PROG_ERROR)]


def logged_checksum(output):
    lines = [line for line in output.splitlines() if line.startswith("final weights sha256:")]
    assert len(lines) == 1, output[-3000:]
    return lines[0].split(":")[1].strip()


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
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}',
     "index '0' must be an integer (a JSON number, not a string)"),
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


def digits_arrays():
    """(train, validation) of the embedded digits: float32 (N, 8, 8, 1), int32 labels."""
    from sklearn.datasets import load_digits

    from pipelines.digits_dataset import split_indices, to_pixel_scale

    digits = load_digits()
    images = to_pixel_scale(digits.images)[..., None].astype("float32")
    labels = digits.target.astype("int32")
    indices = split_indices()
    return tuple((images[indices[s]], labels[indices[s]]) for s in ("train", "validation"))


@pytest.mark.slow
def test_fit_distributed_matches_keras_fit_and_writes_the_run_folder(tmp_path):
    """One replica: the loop's update is Keras' own (`fit` is the reference), with the
    training job's recipe (AdamW, warm-up + cosine, smoothed loss on int labels, clipnorm)."""
    import keras
    import tensorflow as tf

    from keras_vit.models import vision_transformer
    from keras_vit.recipe import TrainingRecipe
    from pipelines.distributed import fit_distributed

    (x, y), (x_val, y_val) = digits_arrays()
    train = tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(32, drop_remainder=True)
    val = tf.data.Dataset.from_tensor_slices((x_val[:64], y_val[:64])).batch(32)
    recipe = TrainingRecipe(learning_rate=3e-3)
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        model = vision_transformer("Ti/2", image_shape=(8, 8, 1), num_classes=10, hidden_dim=16,
                                   depth=1, num_heads=2, mlp_dim=32, pooling="gap")
        models.append(recipe.compile(model, 2 * 8, jit_compile=False))
    ours, reference = models
    history = fit_distributed(ours, ours.optimizer, ours.loss, train, val, epochs=2,
                              run_dir=str(tmp_path / "run"), log=lambda line: None)
    expected = reference.fit(train, validation_data=val, epochs=2, verbose=0).history
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-4, err_msg=key)
    assert history["epoch"] == [0, 1] and history["start_epoch"] == 0
    assert sorted(os.listdir(tmp_path / "run")) == ["best.weights.h5", "history.csv",
                                                    "history.json", "tensorboard"]


# ------------------------------------------------ keras-vit train on two workers


@pytest.mark.slow
def test_two_workers_match_one_process_and_write_one_set_of_artifacts(tmp_path, digits_data_dir):
    """Same global batch, seed and data order: one process (Keras fit) and two
    workers (custom loop) end with the same weights; only the chief writes."""
    import keras

    import keras_vit  # noqa: F401 -- registers the recipe's loss and metric for best.keras
    from pipelines.training.distributed_job import weights_checksum

    # --fit-on train: the custom loop validates every epoch (the digits preset's
    # train+validation is for Keras fit only).
    args = ("--epochs", 1, "--batch-size", 128, "--seed", 3, "--data-dir", digits_data_dir,
            "--fit-on", "train")
    single = finish(start(train_command(tmp_path / "single", *args, "--export-dir",
                                        tmp_path / "single-export")))
    assert single[0] == 0, single[1][-3000:]
    ports, results = run_workers(tmp_path / "multi", *args, "--export-dir", tmp_path / "export")
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    chief_sum, worker_sum = (logged_checksum(output) for _, output in results)
    assert chief_sum == worker_sum  # identical weights on both workers
    # One epoch: best.keras holds the final weights.
    multi = keras.saving.load_model(tmp_path / "multi" / "best.keras")
    alone = keras.saving.load_model(tmp_path / "single" / "best.keras")
    assert weights_checksum(multi) == chief_sum
    for a, b in zip(multi.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(a, b, atol=WEIGHT_TOLERANCE)
    histories = [json.loads((tmp_path / run / "history.json").read_text())
                 for run in ("multi", "single")]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=LOSS_RTOL)
    metrics = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["workers"] == 2
    # The single run's files (history.csv has the loop's learning_rate column too).
    assert sorted(os.listdir(tmp_path / "multi")) == sorted(os.listdir(tmp_path / "single"))
    # One export, as the single process writes it (version 1 and the repository's config).
    assert sorted(os.listdir(tmp_path / "export")) == sorted(os.listdir(
        tmp_path / "single-export")) == ["models.config", "vit_digits"]
    assert os.listdir(tmp_path / "export" / "vit_digits") == ["1"]
    second = parse_tf_config(tf_config(ports, 1))
    assert not os.path.exists(worker_temp_dir(tmp_path / "multi", second))
    # The finished run is refused by the chief before it waits for any peer.
    returncode, output = finish(start(train_command(tmp_path / "multi", "--distribute",
                                                    "multi_worker", *args),
                                      tf_config([free_port(), free_port()], 0)), timeout=120)
    assert returncode == 2 and "holds a finished run" in " ".join(error_lines(output)), output


@pytest.fixture(scope="module")
def digits_records(tmp_path_factory, digits_data_dir):
    """The embedded digits prepared as TFRecords, 2 shards per split."""
    from pipelines.prepare import prepare

    out = tmp_path_factory.mktemp("records") / "digits"
    prepare("digits", out, shards=2, data_dir=digits_data_dir, offline=True, progress=False)
    return out


def wait_for_backup(run_dir, epoch, process, deadline):
    """Until the chief's backup holds `epoch` (CheckpointManager's state file names it)."""
    state = run_dir / "backup" / "checkpoint"
    while not (state.exists() and f'ckpt-{epoch}"' in state.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, "no backup was written"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_worker_restarts_and_the_cluster_resumes_from_records(tmp_path, digits_records):
    """SIGKILL of worker 1 after epoch 1 is backed up, same command again: the chief
    restarts itself, both resume, every epoch is in the history exactly once. The
    workers read disjoint files of `keras-vit prepare`d records."""
    run_dir = tmp_path / "run"
    ports = [free_port(), free_port()]
    # 5 epochs: the kill (after epoch 1) lands well before the end of training.
    command = train_command(run_dir, "--distribute", "multi_worker", "--epochs", 5,
                            "--batch-size", 64, "--dataset", f"tfrecord:{digits_records}",
                            "--startup-timeout", 120, "--no-export")
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in (0, 1)]  # noqa: SIM115 -- children write them
    chief = start(command, tf_config(ports, 0), logs[0])
    worker = start(command, tf_config(ports, 1), logs[1])
    wait_for_backup(run_dir, 1, chief, time.monotonic() + TIMEOUT)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    restarted = start(command, tf_config(ports, 1), logs[1])
    assert finish(chief)[0] == 0, (tmp_path / "log0.txt").read_text()[-3000:]
    assert finish(restarted)[0] == 0, (tmp_path / "log1.txt").read_text()[-3000:]
    for log in logs:
        log.close()
    chief_log = (tmp_path / "log0.txt").read_text()
    assert "restarting this worker" in chief_log and "resuming at epoch" in chief_log
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [0, 1, 2, 3, 4] and all(np.isfinite(history["loss"]))
    csv_epochs = [line.split(",")[0] for line in
                  (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert csv_epochs == ["0", "1", "2", "3", "4"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_this_run"] < 5
    # File-level sharding: 2 files, each worker one; steps from the smaller file.
    assert "steps per epoch of 64 images" in chief_log
    assert not (run_dir / "backup").exists()


# ------------------------------------------------------------------ bad input


def run_train(argv, capsys):
    """`keras-vit train` in this process: (exit code, its `keras-vit train: error:` lines)."""
    from pipelines.train import main

    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith(PROG_ERROR)]


@pytest.mark.parametrize("config, named", [
    ("{oops", "TF_CONFIG is not valid JSON"),
    (tf_config([1, 2], 5), "TF_CONFIG task index 5 is out of range"),
    ("", "needs the TF_CONFIG environment variable"),
])
def test_bad_tf_config_fails_before_writing(tmp_path, monkeypatch, capsys, config, named):
    monkeypatch.setenv("TF_CONFIG", config)
    code, errors = run_train(TINY_RUN + ["--output-dir", str(tmp_path / "run"), "--distribute",
                                         "multi_worker"], capsys)
    assert code == 2 and len(errors) == 1 and named in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_unreachable_peer_fails_after_the_startup_timeout(tmp_path, monkeypatch, capsys):
    """The workers meet in Python before TensorFlow starts, so this runs in-process."""
    ports = [free_port(), free_port()]
    monkeypatch.setenv("TF_CONFIG", tf_config(ports, 0))
    code, errors = run_train(TINY_RUN + ["--output-dir", str(tmp_path / "run"), "--distribute",
                                         "multi_worker", "--startup-timeout", "2"], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert f"127.0.0.1:{ports[1]} not reachable after 2 s" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_batch_not_divisible_by_replicas(tmp_path, digits_data_dir):
    _, results = run_workers(tmp_path / "run", "--batch-size", 33, "--data-dir",
                             digits_data_dir)
    for returncode, output in results:
        errors = error_lines(output)
        assert returncode == 2 and len(errors) == 1, output[-2000:]
        assert "--batch-size 33 (the global batch) is not divisible by the 2 replicas" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--tpu", "my-tpu"], "--tpu 'my-tpu' needs --distribute tpu"),
    (["--startup-timeout", "5"], "--startup-timeout only applies to --distribute multi_worker"),
    (["--distribute", "multi_worker", "--startup-timeout", "0"], "--startup-timeout 0.0"),
    (["--data-service", "localhost"], "--data-service 'localhost': expected grpc://HOST:PORT"),
    (["--dataset", "tfrecord:/nonexistent/records"], "records folder '/nonexistent/records' does not exist"),
    (["--distribute", "tpu", "--tpu", "grpc://127.0.0.1:{port}"],
     "no TPU reachable with --tpu 'grpc://127.0.0.1:{port}'"),
])
def test_distributed_options_fail_with_one_line(tmp_path, capsys, flags, needle):
    port = str(free_port())
    flags = [flag.replace("{port}", port) for flag in flags]
    code, errors = run_train(TINY_RUN + ["--output-dir", str(tmp_path / "run")] + flags, capsys)
    assert code == 2 and len(errors) == 1 and needle.replace("{port}", port) in errors[0], errors
    assert not (tmp_path / "run").exists()
