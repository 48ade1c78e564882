"""`keras-vit train`: train a Vision Transformer and leave a complete run folder.

The job: data (`pipelines.data`) -> precision/XLA choice -> ViT from
`keras_vit.models.vision_transformer` -> AdamW with warm-up + cosine decay,
label smoothing, gradient clipping -> fit with best-checkpoint, BackupAndRestore
(resume), TensorBoard and CSV callbacks -> test metrics, SVC baseline, plots ->
TF Serving export.

Example:
    keras-vit train                      # the embedded digits set, defaults
    keras-vit train --dataset cifar10 --data-dir ~/tfds --offline --epochs 30
    python -m pipelines.train --help
"""

import argparse
import dataclasses
import os
import shutil
import sys
import time

import numpy as np

from pipelines.cli_args import image_size, safe_name

DEFAULT_DATASET = "digits"
SVC_MAX_TRAIN = 20_000  # the SVC baseline is skipped above this many training images
BEST_WEIGHTS = "best.weights.h5"  # best validation accuracy so far, kept across a resume

# Model and schedule defaults per dataset; any flag given on the command line wins.
# The digits preset was chosen by the sweep recorded in README.md.
PRESETS = {
    "digits": dict(variant="Ti/2", hidden_dim=64, depth=4, num_heads=4, mlp_dim=128,
                   pooling="gap", epochs=90, batch_size=128, learning_rate=3e-3,
                   augmentation="affine", tta_shift=1),
}
GENERIC_PRESET = dict(variant="Ti/4", hidden_dim=192, depth=6, num_heads=3, mlp_dim=384,
                      pooling="token", epochs=30, batch_size=128, learning_rate=1e-3,
                      tta_shift=0)


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; `None` means "the dataset preset's value".

    Attributes mirror the command-line flags (see `build_parser`).
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str = None
    offline: bool = False
    image_size: tuple = None
    variant: str = None
    patch_size: int = None
    hidden_dim: int = None
    depth: int = None
    num_heads: int = None
    mlp_dim: int = None
    pooling: str = None
    position_embedding: str = "learned"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    clipnorm: float = 1.0
    augmentation: str = None
    tta_shift: int = None
    precision: str = "auto"
    xla: bool = True
    distribute: str = "none"
    seed: int = 0
    deterministic: bool = False
    output_dir: str = None
    model_name: str = None
    export_dir: str = "savedmodels"
    export: bool = True
    verify_export: bool = True
    baseline: bool = True
    verbose: int = 1

    def resolved(self):
        """A copy with the dataset preset filled in for every unset field."""
        preset = PRESETS.get(self.dataset, GENERIC_PRESET)
        values = dataclasses.asdict(self)
        for key, value in preset.items():
            if values.get(key) is None:
                values[key] = value
        values["output_dir"] = values["output_dir"] or os.path.join(
            "runs", safe_name(self.dataset))
        values["model_name"] = values["model_name"] or f"vit_{safe_name(self.dataset)}"
        return TrainConfig(**values)




def model_kwargs(config, info):
    """`vision_transformer` arguments for a resolved config and dataset info."""
    return dict(
        variant=config.variant, image_shape=info.image_shape, num_classes=info.num_classes,
        patch_size=config.patch_size, hidden_dim=config.hidden_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim, pooling=config.pooling,
        position_embedding=config.position_embedding, dropout=config.dropout,
        attention_dropout=config.attention_dropout, drop_path=config.drop_path,
    )


def check_config(config):
    """Fails before any data is read or model trained, naming the bad value."""
    from keras_vit.models.vit import parse_variant
    from pipelines.distribute import STRATEGIES

    parse_variant(config.variant)
    if config.distribute not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {STRATEGIES}; "
                         f"received {config.distribute!r}")
    for name in ("epochs", "batch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; "
                             f"received {value!r}")
    if not isinstance(config.tta_shift, int) or config.tta_shift < 0:
        raise ValueError(f"--tta-shift must be an integer >= 0; received {config.tta_shift!r}")
    for name in ("learning_rate", "clipnorm"):
        if not getattr(config, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive; "
                             f"received {getattr(config, name)!r}")
    for name in ("label_smoothing", "warmup_fraction", "weight_decay"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1); received {value!r}")
    from pipelines.precision import PRECISIONS
    if config.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}; received {config.precision!r}")


def warmup_cosine_schedule(learning_rate, total_steps, warmup_fraction=0.1):
    """Keras' `CosineDecay` with a linear warm-up over `warmup_fraction` of the steps.

    Args:
        learning_rate: float. Peak learning rate, reached at the end of warm-up.
        total_steps: int. Optimizer steps of the whole run.
        warmup_fraction: float in [0, 1). Share of the steps spent warming up.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.
    """
    import keras

    warmup_steps = int(warmup_fraction * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=learning_rate, warmup_steps=warmup_steps)


def compile_for_training(model, total_steps, *, learning_rate, weight_decay=0.05,
                         warmup_fraction=0.1, clipnorm=1.0, label_smoothing=0.1,
                         jit_compile=True):
    """Compiles `model` with AdamW on a warm-up + cosine schedule and smoothed cross-entropy.

    Labels are one-hot (see `one_hot_labels`): Keras' sparse cross-entropy has no
    label smoothing.

    Args:
        model: a Keras model producing logits.
        total_steps: int. Optimizer steps of the whole run.
        learning_rate, weight_decay, warmup_fraction, clipnorm, label_smoothing:
            the optimisation hyperparameters.
        jit_compile: bool. Compile the steps with XLA.

    Example:
    >>> compile_for_training(model, 100 * steps_per_epoch, learning_rate=1e-3)
    """
    import keras

    optimizer = keras.optimizers.AdamW(
        warmup_cosine_schedule(learning_rate, total_steps, warmup_fraction),
        weight_decay=weight_decay, clipnorm=clipnorm)
    model.compile(optimizer,
                  keras.losses.CategoricalCrossentropy(from_logits=True,
                                                       label_smoothing=label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile)
    return model


def one_hot_labels(num_classes):
    """A `Dataset.map` function turning int labels into one-hot vectors."""
    import tensorflow as tf

    return lambda images, labels: (images, tf.one_hot(labels, num_classes))


def epoch_timer():
    """A Keras callback whose `seconds` lists each epoch's wall time (images/s without compile)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _callbacks(run_dir, resumed_best, timer):
    import keras

    return [
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        # Weights only while training (about half the cost of a .keras archive per
        # save); the job writes best.keras once at the end.
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, BEST_WEIGHTS), monitor="val_accuracy", mode="max",
            save_best_only=True, save_weights_only=True, initial_value_threshold=resumed_best),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        timer,
        # Last at each epoch end: an epoch is backed up only once its row and best
        # checkpoint are written (a kill in between repeats the epoch, and
        # `read_history_csv` keeps the later row). Two alternating backup files,
        # so a kill during the save leaves the previous one intact.
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"),
                                         double_checkpoint=True),
    ]


def _prepare_run_dir(run_dir, log):
    """Keeps the state of an interrupted run (to resume); clears a finished one."""
    backup = os.path.join(run_dir, "backup")
    if os.path.isdir(backup):
        log(f"resuming the interrupted run in {run_dir}")
        return True
    if os.path.isdir(run_dir):
        for name in ("history.csv", "best.keras", BEST_WEIGHTS, "metrics.json", "tensorboard"):
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(run_dir, exist_ok=True)
    return False


def train(config, log=print):
    """Runs the whole training job; returns the metrics written to `metrics.json`.

    Args:
        config: a `TrainConfig` (unset fields take the dataset preset).
        log: callable taking one message per line.

    Returns:
        dict of the run's metrics (also in `<output_dir>/metrics.json`).

    Example:
    >>> metrics = train(TrainConfig(epochs=1, export=False))
    >>> metrics["test_accuracy"]
    """
    config = config.resolved()
    check_config(config)
    import keras

    from keras_vit.models import rollout_maps, shift_averaged, vision_transformer
    from pipelines import reporting
    from pipelines.baselines import dataset_to_numpy, svc_baseline
    from pipelines.data import load_datasets
    from pipelines.distribute import make_strategy
    from pipelines.precision import choose_precision

    job_start = time.perf_counter()
    phases = {}  # wall seconds per phase, in metrics.json
    run_dir = config.output_dir
    # Before any tf.data op: TensorFlow derives op seeds from the global seed.
    keras.utils.set_random_seed(config.seed)
    data = load_datasets(config.dataset, batch_size=config.batch_size,
                         image_size=config.image_size, data_dir=config.data_dir,
                         offline=config.offline, augmentation=config.augmentation,
                         seed=config.seed, deterministic=config.deterministic,
                         drop_remainder=True)
    phases["data"] = time.perf_counter() - job_start
    info = data.info
    kwargs = model_kwargs(config, info)
    vision_transformer(**kwargs)  # fail on a bad architecture before anything is written
    log(f"dataset {info.name}: {info.num_train} train / {info.num_validation} validation / "
        f"{info.num_test} test images of shape {info.image_shape}, {info.num_classes} classes")
    resumed = _prepare_run_dir(run_dir, log)

    policy, reason = choose_precision(config.precision)
    keras.config.set_dtype_policy(policy)
    log(f"precision: {policy} ({reason}); XLA: {'on' if config.xla else 'off'}")
    try:
        keras.utils.set_random_seed(config.seed)
        strategy = make_strategy(config.distribute)
        steps_per_epoch = int(data.train.cardinality().numpy())
        with strategy.scope():  # variables and optimizer slots live on the strategy's devices
            model = vision_transformer(**kwargs)
            compile_for_training(model, config.epochs * steps_per_epoch,
                                 learning_rate=config.learning_rate,
                                 weight_decay=config.weight_decay,
                                 warmup_fraction=config.warmup_fraction,
                                 clipnorm=config.clipnorm,
                                 label_smoothing=config.label_smoothing, jit_compile=config.xla)
        log(f"model {model.name}: {model.count_params():,} parameters; distribution: "
            f"{config.distribute} ({strategy.num_replicas_in_sync} replica(s))")
        one_hot = one_hot_labels(info.num_classes)
        train_ds, val_ds = data.train.map(one_hot), data.validation.map(one_hot)
        history_path = os.path.join(run_dir, "history.csv")
        previous = reporting.read_history_csv(history_path)
        resumed_best = max(previous["val_accuracy"]) if previous.get("val_accuracy") else None
        timer = epoch_timer()
        start = time.perf_counter()
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                  callbacks=_callbacks(run_dir, resumed_best, timer), verbose=config.verbose)
        train_seconds = phases["fit"] = time.perf_counter() - start

        evaluate_start = time.perf_counter()
        best_weights = os.path.join(run_dir, BEST_WEIGHTS)
        if os.path.exists(best_weights):
            model.load_weights(best_weights)
        model.save(os.path.join(run_dir, "best.keras"))
        best = model
        # One predict pass per model on the small test set: not worth an XLA compile.
        best.jit_compile = False
        final = shift_averaged(best, config.tta_shift) if config.tta_shift else best
        x_test, y_test = dataset_to_numpy(data.test)
        single_loss, single_accuracy = _score(best, x_test, y_test, config)
        final.predict(x_test[:config.batch_size], verbose=0)  # trace outside the timing
        start = time.perf_counter()
        logits = final.predict(x_test, batch_size=config.batch_size, verbose=0)
        inference_seconds = time.perf_counter() - start
        test_loss, test_accuracy = _loss_and_accuracy(logits, y_test, config)
        predictions = np.argmax(logits, axis=-1)
        phases["evaluate"] = time.perf_counter() - evaluate_start
        steady = timer.seconds[1:] or timer.seconds
        metrics = {
            "dataset": info.name, "model": best.name, "parameters": int(best.count_params()),
            "precision": policy, "precision_reason": reason, "xla": config.xla,
            "epochs": config.epochs, "epochs_this_run": len(timer.seconds), "resumed": resumed,
            "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
            "tta_shift": config.tta_shift,
            "test_accuracy_single_view": float(single_accuracy),
            "test_loss_single_view": float(single_loss),
            "train_images_per_second": (float(steps_per_epoch * config.batch_size
                                              / np.median(steady)) if steady else None),
            "inference_images_per_second": float(len(x_test) / inference_seconds),
            "train_wall_seconds": train_seconds,
            "epoch_seconds": [round(t, 3) for t in timer.seconds],
            "config": dataclasses.asdict(config),
        }
        start = time.perf_counter()
        if config.baseline and info.num_train <= SVC_MAX_TRAIN:
            plain = load_datasets(config.dataset, batch_size=1024,
                                  image_size=config.image_size, data_dir=config.data_dir,
                                  offline=True, augment=False, seed=config.seed)
            baseline = svc_baseline(dataset_to_numpy(plain.train), (x_test, y_test))
            metrics["svc_test_accuracy"] = baseline["accuracy"]
        phases["baseline"] = time.perf_counter() - start
        start = time.perf_counter()
        _write_artifacts(run_dir, metrics, best, info, x_test, y_test, predictions, reporting,
                         rollout_maps)
        phases["artifacts"] = time.perf_counter() - start
        if config.export:
            start = time.perf_counter()
            metrics["export"] = str(_export(final, config, info, x_test, log))
            phases["export"] = time.perf_counter() - start
        metrics["phase_seconds"] = phases
        metrics["wall_seconds"] = time.perf_counter() - job_start
        reporting.write_json(os.path.join(run_dir, "metrics.json"), metrics)
        _summary(metrics, run_dir, log)
        return metrics
    finally:
        keras.config.set_dtype_policy("float32")


def _loss_and_accuracy(logits, labels, config):
    """Test loss (the training loss: smoothed cross-entropy) and accuracy of `logits`."""
    import keras

    loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                label_smoothing=config.label_smoothing)
    one_hot = np.eye(logits.shape[-1], dtype="float32")[labels]
    value = float(keras.ops.convert_to_numpy(loss(one_hot, logits.astype("float32"))))
    return value, float(np.mean(np.argmax(logits, axis=-1) == labels))


def _score(model, images, labels, config):
    return _loss_and_accuracy(model.predict(images, batch_size=config.batch_size, verbose=0),
                              labels, config)


def _write_artifacts(run_dir, metrics, model, info, x_test, y_test, predictions, reporting,
                     rollout_maps):
    history = reporting.read_history_csv(os.path.join(run_dir, "history.csv"))
    reporting.write_json(os.path.join(run_dir, "history.json"), history)
    reporting.plot_training_curves(history, os.path.join(run_dir, "training_curves.png"))
    matrix = reporting.confusion_matrix(y_test, predictions, info.num_classes)
    reporting.plot_confusion_matrix(matrix, info.class_names,
                                    os.path.join(run_dir, "confusion_matrix.png"))
    shown = x_test[:6]
    titles = [f"true {info.class_names[t]} / pred {info.class_names[p]}"
              for t, p in zip(y_test[:6], predictions[:6])]
    reporting.plot_attention_maps(shown, rollout_maps(model, shown), titles,
                                  os.path.join(run_dir, "attention_maps.png"))
    metrics["artifacts"] = sorted(os.listdir(run_dir))


def _export(model, config, info, x_test, log):
    from pipelines.export import export_model

    version_dir = export_model(model, config.model_name, config.export_dir,
                               class_names=list(info.class_names), warmup_images=x_test[:4],
                               verify=config.verify_export, verbose=bool(config.verbose))
    log(f"exported for TF Serving: {version_dir}")
    return version_dir


def _summary(metrics, run_dir, log):
    log("")
    views = (f", mean of {(2 * metrics['tta_shift'] + 1) ** 2} shifted views; single view "
             f"{metrics['test_accuracy_single_view']:.4f}" if metrics["tta_shift"] else "")
    log(f"test accuracy  {metrics['test_accuracy']:.4f}   (ViT, {metrics['parameters']:,} "
        f"parameters, {metrics['precision']}{views})")
    if "svc_test_accuracy" in metrics:
        log(f"SVC baseline   {metrics['svc_test_accuracy']:.4f}   (scikit-learn SVC(), defaults, "
            "same split, this run)")
    log(f"train speed    {metrics['train_images_per_second']:.0f} images/s; inference "
        f"{metrics['inference_images_per_second']:.0f} images/s; wall {metrics['wall_seconds']:.0f} s")
    log(f"run folder     {run_dir}")
    if "export" in metrics:
        log(f"SavedModel     {metrics['export']}")




def build_parser():
    """The `keras-vit train` argument parser; every option documented in `--help`."""
    from pipelines.data import describe_sources

    parser = argparse.ArgumentParser(
        prog="keras-vit train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a Vision Transformer. Options left unset take the dataset's "
                    "preset (digits: " + ", ".join(f"{k}={v}" for k, v in PRESETS["digits"].items())
                    + "; other data: " + ", ".join(f"{k}={v}" for k, v in GENERIC_PRESET.items())
                    + ").",
        epilog=describe_sources())
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET,
                      help="'digits' (embedded, no network), a tfds name, or an image folder")
    data.add_argument("--data-dir", help="tensorflow-datasets data directory")
    data.add_argument("--offline", action="store_true",
                      help="never touch the network: the tfds dataset must be prepared already")
    data.add_argument("--image-size", type=image_size, help="resize images to HEIGHT,WIDTH")
    data.add_argument("--augmentation", choices=("none", "flip", "crop", "crop_flip", "affine"),
                      help="training augmentation (default: what suits the data)")
    data.add_argument("--tta-shift", type=int,
                      help="evaluate and export the mean prediction over all shifts of up to N "
                           "pixels (test-time augmentation; 0: off)")
    data.add_argument("--deterministic", action="store_true",
                      help="reproducible input order and augmentation")
    model = parser.add_argument_group("model")
    model.add_argument("--variant", help="ViT size and patch, e.g. Ti/16, S/16, B/16, L/16, H/14")
    model.add_argument("--patch-size", type=int, help="override the variant's patch size")
    model.add_argument("--hidden-dim", type=int, help="override the width")
    model.add_argument("--depth", type=int, help="override the number of encoder blocks")
    model.add_argument("--num-heads", type=int, help="override the attention heads")
    model.add_argument("--mlp-dim", type=int, help="override the MLP width")
    model.add_argument("--pooling", choices=("token", "gap"), help="class token or average pooling")
    model.add_argument("--position-embedding", choices=("learned", "sincos2d"), default="learned",
                       help="learned or fixed 2-D sin-cos position embedding")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout rate")
    model.add_argument("--attention-dropout", type=float, default=0.0,
                       help="dropout on attention weights")
    model.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="training epochs")
    optim.add_argument("--batch-size", type=int, help="batch size")
    optim.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    optim.add_argument("--warmup-fraction", type=float, default=0.1,
                       help="fraction of steps of linear warm-up before cosine decay")
    optim.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing")
    optim.add_argument("--clipnorm", type=float, default=1.0, help="gradient clipping norm")
    optim.add_argument("--precision", default="auto",
                       choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                       help="auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native "
                            "bf16 (AMX/AVX-512 BF16, where it is faster), float32 otherwise")
    optim.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                       help="compile train and predict steps with XLA (faster on this CPU)")
    optim.add_argument("--distribute", default="none",
                       choices=("none", "mirrored", "multi_worker"),
                       help="tf.distribute strategy: one device, all local GPUs (or the CPU), "
                            "or the workers in TF_CONFIG; the batch size is the global one")
    optim.add_argument("--seed", type=int, default=0, help="random seed")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", help="run folder (default runs/<dataset>); rerunning with "
                                          "the folder of a killed run resumes it")
    out.add_argument("--model-name", help="export name (default vit_<dataset>)")
    out.add_argument("--export-dir", default="savedmodels", help="TF Serving model base folder")
    out.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                     help="export the best model for TF Serving at the end")
    out.add_argument("--verify-export", action=argparse.BooleanOptionalAction, default=True,
                     help="verify the export in a fresh process")
    out.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="measure scikit-learn's SVC on the same split")
    out.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                     help="Keras fit verbosity (1: progress bar)")
    return parser


def main(argv=None):
    """Entry point of `keras-vit train` and `python -m pipelines.train`."""
    args = build_parser().parse_args(argv)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # Keras' own progress bar is the one to watch.
    config = TrainConfig(**vars(args))
    try:
        train(config)
    except ValueError as error:
        print(f"keras-vit train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
