"""`fit_distributed`: a custom training loop for any `tf.distribute` strategy.

Why not `model.fit`: Keras 3's `fit` does not train under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585), and Keras 3 optimizers
clip each replica's gradients *before* summing them across replicas
(`BaseOptimizer._backend_apply_gradients` clips, then
`TFOptimizer._backend_update_step` all-reduces), so `clipnorm` with several
replicas is not the single-device update (cf. keras-team/keras#19891). This
loop sums the gradients across all replicas first, then hands the global
gradient to the optimizer (whose own all-reduce is switched off for that
optimizer instance), so clipping, weight decay and the schedule see exactly
what a single device with the global batch would see.

What it keeps of the training job's `fit`: per-epoch loss/accuracy (train and
validation) and learning rate in a History-like dict, `history.csv` in the
columns of `keras.callbacks.CSVLogger`, the best weights by a monitored metric,
TensorBoard scalars, and backup/resume at epoch boundaries.

Multi-worker rules (TensorFlow's guide): every worker runs every step and
every save (saves may involve collectives); only the chief writes into
`run_dir`, the others into `cluster.worker_temp_dir`, which they remove. On
resume the chief restores the backup and broadcasts it to all workers, so no
shared file system is needed. A lost peer raises `PeerLostError`; the job then
restarts its process (`restart_process`) and resumes from the last backup.

Example:
    >>> history = fit_distributed(model, optimizer, loss, train_ds, val_ds,
    ...                           epochs=3, run_dir="runs/demo", strategy=strategy)
    >>> history["val_accuracy"][-1]  # doctest: +SKIP
"""

import contextlib
import csv
import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from pipelines.distributed.cluster import worker_temp_dir

#: Columns of the history, in the order of `history.csv` (CSVLogger sorts keys).
HISTORY_KEYS = ("accuracy", "learning_rate", "loss", "val_accuracy", "val_loss", "seconds")
BEST_WEIGHTS = "best.weights.h5"
BACKUP_DIR = "backup"
#: Errors a collective raises when a peer died, restarted or timed out.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.FailedPreconditionError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError)


class PeerLostError(RuntimeError):
    """A peer of the cluster died or restarted; restart this process to resume."""


def fit_distributed(model, optimizer, loss, train_data, validation_data=None, *, epochs,
                    run_dir, strategy=None, cluster=None, steps_per_epoch=None,
                    global_batch_size=None, monitor="val_accuracy", log=print):
    """Trains `model` synchronously on all replicas of `strategy`.

    Args:
        model: a Keras model producing logits, built under `strategy.scope()`.
        optimizer: a Keras optimizer (e.g. AdamW with a schedule and clipnorm),
            created under `strategy.scope()`.
        loss: a `keras.losses.Loss` (its unreduced `call` is used) or a function
            `(y_true, y_pred) -> per-example losses`.
        train_data: a `tf.data.Dataset` of (images, labels) batched with the
            GLOBAL batch size (split across replicas; each global batch is what
            a single device would see), or a function `input_context -> dataset`
            batched with the per-replica batch (`distribute_datasets_from_function`).
        validation_data: same kinds, or None.
        epochs: total epochs of the run, including those done before a resume.
        run_dir: the chief's run folder (history.csv/json, best weights,
            tensorboard/, backup/).
        strategy: a `tf.distribute.Strategy`; None: the current one.
        cluster: the `ClusterConfig` of a multi-worker run (None: this process
            is the chief).
        steps_per_epoch: optimizer steps per epoch; None: the dataset's
            cardinality (it must be finite and known).
        global_batch_size: examples per step over all replicas; None: the
            dataset's static batch dimension. Must divide by the replicas.
        monitor: history key whose maximum selects the best weights.
        log: callable taking one line per epoch (the chief's only).

    Returns:
        dict: each key of `HISTORY_KEYS` -> one value per epoch (all epochs of
        the run, resumed ones included), plus "epoch" and "start_epoch" (the
        epoch this process started at; > 0 after a resume).

    Raises:
        ValueError: a bad argument (before anything is written).
        PeerLostError: a peer failed; restart the process to resume.
    """
    strategy = strategy or tf.distribute.get_strategy()
    global_batch_size = _check_arguments(strategy, train_data, epochs, global_batch_size,
                                         steps_per_epoch, monitor)
    steps_per_epoch = steps_per_epoch or _cardinality(train_data)
    chief = cluster is None or cluster.is_chief
    out_dir = run_dir if chief else worker_temp_dir(run_dir, cluster)
    resuming = chief and os.path.isdir(os.path.join(run_dir, BACKUP_DIR))
    _prepare_dir(out_dir, resuming)
    _disable_optimizer_all_reduce(optimizer)
    with strategy.scope():
        optimizer.build(model.trainable_variables)
        state = _TrainingState(model, optimizer, epochs)
    manager = tf.train.CheckpointManager(state.checkpoint, os.path.join(out_dir, BACKUP_DIR),
                                         max_to_keep=2)
    if resuming:
        state.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    _broadcast_from_chief(strategy, state.variables)
    if not resuming:
        # From the start the folder holds an interrupted run: a kill or a lost
        # peer during the first epoch resumes (from the initial weights) instead
        # of leaving a folder that looks like neither a new nor a resumable run.
        manager.save(checkpoint_number=0)
    start_epoch = int(state.epoch.numpy())
    if chief and start_epoch:
        log(f"resuming at epoch {start_epoch + 1}/{epochs} from {manager.latest_checkpoint}")
    steps = _Steps(strategy, model, optimizer, loss, global_batch_size)
    train_dist = _distribute(strategy, train_data)
    val_dist = _distribute(strategy, validation_data) if validation_data is not None else None
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))
    try:
        for epoch in range(start_epoch, epochs):
            row = _run_epoch(steps, train_dist, val_dist, steps_per_epoch, optimizer)
            state.record(epoch, row)
            _write_epoch(out_dir, state, epoch, row, writer, model, monitor)
            manager.save(checkpoint_number=epoch + 1)  # last: the epoch is complete
            if chief:
                log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                    f"{key} {row[key]:.4f}" for key in HISTORY_KEYS if key in row))
    except PEER_ERRORS as err:
        raise PeerLostError(f"a peer of the cluster was lost ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]}); restart to resume") from err
    finally:
        writer.close()
    history = state.history_dict()
    history["start_epoch"] = start_epoch
    # Like BackupAndRestore: a finished run leaves no backup, so a rerun starts over.
    shutil.rmtree(os.path.join(out_dir, BACKUP_DIR), ignore_errors=True)
    if not chief:
        shutil.rmtree(out_dir, ignore_errors=True)
    return history


def _check_arguments(strategy, train_data, epochs, global_batch_size, steps_per_epoch,
                     monitor):
    """Validates before anything is written; returns the global batch size."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0:
        raise ValueError(f"epochs={epochs!r}: expected a positive integer")
    if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch <= 0):
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r}: expected a positive integer")
    if monitor not in HISTORY_KEYS:
        raise ValueError(f"monitor={monitor!r}: expected one of {HISTORY_KEYS}")
    replicas = strategy.num_replicas_in_sync
    if global_batch_size is None:
        if not isinstance(train_data, tf.data.Dataset):
            raise ValueError("global_batch_size is required when train_data is a function")
        global_batch_size = train_data.element_spec[0].shape[0]
        if global_batch_size is None:
            raise ValueError("the training batches have no static size: batch with "
                             "drop_remainder=True or pass global_batch_size")
    if global_batch_size % replicas:
        raise ValueError(
            f"--batch-size {global_batch_size} (the global batch) is not divisible by the "
            f"{replicas} replicas in sync: use a multiple of {replicas}")
    if steps_per_epoch is None:
        _cardinality(train_data)
    return int(global_batch_size)


def _cardinality(data):
    count = int(data.cardinality()) if isinstance(data, tf.data.Dataset) else -1
    if count <= 0:
        raise ValueError("the training dataset has no known finite number of batches: "
                         "pass steps_per_epoch")
    return count


def _prepare_dir(out_dir, resuming):
    """A fresh run clears the files of a finished run; a resume keeps everything."""
    if not resuming:
        for name in ("history.csv", "history.json", BEST_WEIGHTS, "tensorboard", BACKUP_DIR):
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(out_dir, exist_ok=True)


def _disable_optimizer_all_reduce(optimizer):
    """The loop all-reduces gradients itself, before clipping; the optimizer must not
    sum them a second time (its replicas then all apply the same global gradient)."""
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if opt is not None and hasattr(opt, "_all_reduce_sum_gradients"):
            opt._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)


class _TrainingState:
    """What a backup holds: model, optimizer, next epoch, history rows, best value."""

    def __init__(self, model, optimizer, epochs):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.rows = tf.Variable(np.full((epochs, len(HISTORY_KEYS)), np.nan), trainable=False)
        self.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              epoch=self.epoch, rows=self.rows, best=self.best)
        self.variables = ([v.value for v in model.variables]
                          + [v.value for v in optimizer.variables]
                          + [self.epoch, self.rows, self.best])

    def record(self, epoch, row):
        values = [row.get(key, np.nan) for key in HISTORY_KEYS]
        self.rows[epoch].assign(values)
        self.epoch.assign(epoch + 1)

    def history_dict(self):
        done = int(self.epoch.numpy())
        rows = self.rows.numpy()[:done]
        history = {"epoch": list(range(done))}
        for column, key in enumerate(HISTORY_KEYS):
            if not np.all(np.isnan(rows[:, column])):
                history[key] = [float(v) for v in rows[:, column]]
        return history


def _broadcast_from_chief(strategy, variables):
    """Sets every replica's copy of `variables` to replica 0's (the chief's) values.

    An all-reduce of (value if replica 0 else 0): works without a shared file
    system, since only the chief needs to read the backup.
    """
    if strategy.num_replicas_in_sync == 1:
        return

    def replica_fn():
        context = tf.distribute.get_replica_context()
        keep = tf.equal(context.replica_id_in_sync_group, 0)
        # tf.where, not a product: -inf * 0 would be NaN.
        return [tf.cast(context.all_reduce("sum", tf.where(
            keep, tf.cast(v, tf.float64), tf.zeros(v.shape, tf.float64))), v.dtype)
            for v in variables]

    values = strategy.run(tf.function(replica_fn))
    for variable, value in zip(variables, values):
        variable.assign(strategy.experimental_local_results(value)[0])


def _distribute(strategy, data):
    if callable(data) and not isinstance(data, tf.data.Dataset):
        return strategy.distribute_datasets_from_function(data)
    options = tf.data.Options()
    if data.options().experimental_distribute.auto_shard_policy == \
            tf.data.experimental.AutoShardPolicy.AUTO:
        # Each worker takes its slice of every global batch: the steps see the
        # same examples as one process with the global batch would.
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(data.with_options(options))


class _Steps:
    """The compiled replicated train and evaluation steps."""

    def __init__(self, strategy, model, optimizer, loss, global_batch_size):
        self.strategy = strategy
        self.model, self.optimizer = model, optimizer
        self.per_example = loss.call if hasattr(loss, "call") else loss
        self.global_batch_size = global_batch_size
        self.train = tf.function(self._train)
        self.evaluate = tf.function(self._evaluate)

    def _sums(self, labels, logits, per_example_loss):
        if labels.shape.rank == logits.shape.rank:  # one-hot (smoothed) labels
            labels = tf.argmax(labels, axis=-1)
        correct = tf.equal(tf.cast(labels, tf.int64), tf.argmax(logits, axis=-1))
        return tf.stack([tf.reduce_sum(tf.cast(per_example_loss, tf.float64)),
                         tf.reduce_sum(tf.cast(correct, tf.float64)),
                         tf.cast(tf.shape(logits)[0], tf.float64)])

    def _train_replica(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self.per_example(labels, logits)
            # Mean over the GLOBAL batch: summing replicas' gradients gives the
            # gradient of the global mean loss.
            loss = tf.reduce_sum(per_example) / self.global_batch_size
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
        self.optimizer.apply(grads, variables)
        return self._sums(labels, logits, per_example)

    def _train(self, iterator):
        sums = self.strategy.run(self._train_replica, args=next(iterator))
        return self.strategy.reduce("sum", sums, axis=None)

    def _evaluate_replica(self, images, labels):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        return self._sums(labels, logits, self.per_example(labels, logits))

    def _evaluate(self, batch):
        sums = self.strategy.run(self._evaluate_replica, args=batch)
        return self.strategy.reduce("sum", sums, axis=None)


def _run_epoch(steps, train_dist, val_dist, steps_per_epoch, optimizer):
    """One epoch of training (and validation); returns its history row."""
    start = time.perf_counter()
    iterator = iter(train_dist)
    totals = tf.zeros(3, tf.float64)
    for _ in range(steps_per_epoch):
        totals += steps.train(iterator)
    loss_sum, correct, count = totals.numpy()
    row = {"loss": loss_sum / count, "accuracy": correct / count,
           "learning_rate": _current_learning_rate(optimizer)}
    if val_dist is not None:
        totals = tf.zeros(3, tf.float64)
        for batch in val_dist:
            totals += steps.evaluate(batch)
        loss_sum, correct, count = totals.numpy()
        row.update(val_loss=loss_sum / count, val_accuracy=correct / count)
    row["seconds"] = time.perf_counter() - start
    return row


def _current_learning_rate(optimizer):
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


@contextlib.contextmanager
def _replaced(path):
    """Writes `path` whole or not at all (a kill mid-write keeps the old file)."""
    with open(path + ".tmp", "w", newline="") as handle:
        yield handle
    os.replace(path + ".tmp", path)


def _write_epoch(out_dir, state, epoch, row, writer, model, monitor):
    """history.csv/json, TensorBoard scalars and (if improved) the best weights."""
    history = state.history_dict()
    columns = ["epoch"] + [k for k in HISTORY_KEYS if k in history and k != "seconds"]
    with _replaced(os.path.join(out_dir, "history.csv")) as handle:
        table = csv.writer(handle)
        table.writerow(columns)
        for index in range(len(history["epoch"])):
            table.writerow([history[c][index] for c in columns])
    with _replaced(os.path.join(out_dir, "history.json")) as handle:
        json.dump(history, handle, indent=1)
    with writer.as_default(step=epoch):
        for key, value in row.items():
            scope = "validation" if key.startswith("val_") else "train"
            tf.summary.scalar(f"{scope}/{key.removeprefix('val_')}", value)
    value = row.get(monitor, math.nan)
    if not math.isnan(value) and value > state.best.numpy():
        state.best.assign(value)
        model.save_weights(os.path.join(out_dir, BEST_WEIGHTS))
