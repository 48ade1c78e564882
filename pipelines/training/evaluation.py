"""After the fit: test metrics (with test-time augmentation), SVC baseline, plots, export, summary.

Example:
>>> scores = evaluate_best(config, fit_outcome.model, data.test)
>>> scores.metrics["test_accuracy"]
"""

import dataclasses
import os
import time

import numpy as np

from pipelines.training.config import recipe_of
from pipelines.training.run_folder import BEST_WEIGHTS, HISTORY_CSV

SVC_MAX_TRAIN = 20_000  # the SVC baseline is skipped above this many training images


@dataclasses.dataclass
class Evaluation:
    """The best model, the exported one (TTA-wrapped or not), test arrays and scores."""

    best: object
    final: object
    x_test: np.ndarray
    y_test: np.ndarray
    predictions: np.ndarray
    metrics: dict


def loss_and_accuracy(logits, labels, config):
    """Test loss (the training loss, from the recipe) and accuracy of `logits`.

    Args:
        logits: `(N, K)` array.
        labels: `(N,)` int array.
        config: the resolved `TrainConfig` (for its label smoothing).

    Returns:
        `(loss, accuracy)` floats.
    """
    import keras

    loss = recipe_of(config).loss(logits.shape[-1])
    value = float(keras.ops.convert_to_numpy(loss(labels, logits.astype("float32"))))
    return value, float(np.mean(np.argmax(logits, axis=-1) == labels))


def evaluate_best(config, model, test):
    """Loads the best checkpoint into `model`, saves `best.keras` and scores the test split.

    The reported accuracy is that of the exported model: the mean over shifted
    views with `--tta-shift`, the single view otherwise (also reported).

    Args:
        config: the resolved `TrainConfig`.
        model: the trained model.
        test: the batched test dataset.

    Returns:
        An `Evaluation`.
    """
    from keras_vit.models import shift_averaged
    from pipelines.baselines import dataset_to_numpy

    run_dir = config.output_dir
    best_weights = os.path.join(run_dir, BEST_WEIGHTS)
    if os.path.exists(best_weights):
        model.load_weights(best_weights)
    model.save(os.path.join(run_dir, "best.keras"))
    # One predict pass per model on the small test set: not worth an XLA compile.
    model.jit_compile = False
    final = shift_averaged(model, config.tta_shift) if config.tta_shift else model
    x_test, y_test = dataset_to_numpy(test)
    single_loss, single_accuracy = loss_and_accuracy(
        model.predict(x_test, batch_size=config.batch_size, verbose=0), y_test, config)
    final.predict(x_test[:config.batch_size], verbose=0)  # trace outside the timing
    start = time.perf_counter()
    logits = final.predict(x_test, batch_size=config.batch_size, verbose=0)
    inference_seconds = time.perf_counter() - start
    test_loss, test_accuracy = loss_and_accuracy(logits, y_test, config)
    metrics = {"test_accuracy": test_accuracy, "test_loss": test_loss,
               "tta_shift": config.tta_shift, "test_accuracy_single_view": single_accuracy,
               "test_loss_single_view": single_loss,
               "inference_images_per_second": float(len(x_test) / inference_seconds)}
    return Evaluation(best=model, final=final, x_test=x_test, y_test=y_test,
                      predictions=np.argmax(logits, axis=-1), metrics=metrics)


def svc_accuracy(config, info, test_arrays):
    """scikit-learn `SVC()` test accuracy on the same split, or None when skipped."""
    from pipelines.baselines import dataset_to_numpy, svc_baseline
    from pipelines.training.data_loading import load_plain_train

    if not config.baseline or info.num_train > SVC_MAX_TRAIN:
        return None
    return svc_baseline(dataset_to_numpy(load_plain_train(config)), test_arrays)["accuracy"]


def write_artifacts(run_dir, metrics, evaluation, info):
    """history.json, training curves, confusion matrix and attention maps in `run_dir`."""
    from keras_vit.models import rollout_maps
    from pipelines import reporting

    history = reporting.read_history_csv(os.path.join(run_dir, HISTORY_CSV))
    reporting.write_json(os.path.join(run_dir, "history.json"), history)
    reporting.plot_training_curves(history, os.path.join(run_dir, "training_curves.png"))
    y_test, predictions = evaluation.y_test, evaluation.predictions
    matrix = reporting.confusion_matrix(y_test, predictions, info.num_classes)
    reporting.plot_confusion_matrix(matrix, info.class_names,
                                    os.path.join(run_dir, "confusion_matrix.png"))
    shown = evaluation.x_test[:6]
    titles = [f"true {info.class_names[t]} / pred {info.class_names[p]}"
              for t, p in zip(y_test[:6], predictions[:6])]
    reporting.plot_attention_maps(shown, rollout_maps(evaluation.best, shown), titles,
                                  os.path.join(run_dir, "attention_maps.png"))
    metrics["artifacts"] = sorted(os.listdir(run_dir))


def export_final(config, evaluation, info, log):
    """Exports the final model for TF Serving (`pipelines.export.export_model`); returns its folder."""
    from pipelines.serving.transaction import export_model

    version_dir = export_model(evaluation.final, config.model_name, config.export_dir,
                               class_names=list(info.class_names),
                               warmup_images=evaluation.x_test[:4],
                               verify=config.verify_export, verbose=bool(config.verbose))
    log(f"exported for TF Serving: {version_dir}")
    return version_dir


def log_summary(metrics, run_dir, log):
    """The closing lines: accuracy beside the SVC baseline, speeds, folders."""
    log("")
    views = (f", mean of {(2 * metrics['tta_shift'] + 1) ** 2} shifted views; single view "
             f"{metrics['test_accuracy_single_view']:.4f}" if metrics["tta_shift"] else "")
    log(f"test accuracy  {metrics['test_accuracy']:.4f}   (ViT, {metrics['parameters']:,} "
        f"parameters, {metrics['precision']}{views})")
    if "svc_test_accuracy" in metrics:
        fitted = "train+validation" if metrics.get("fit_on") == "train+validation" else "train"
        log(f"SVC baseline   {metrics['svc_test_accuracy']:.4f}   (scikit-learn SVC(), defaults, "
            f"fitted on {fitted} as the ViT, this run)")
    log(f"train speed    {metrics['train_images_per_second']:.0f} images/s; inference "
        f"{metrics['inference_images_per_second']:.0f} images/s; wall {metrics['wall_seconds']:.0f} s")
    log(f"run folder     {run_dir}")
    if "export" in metrics:
        log(f"SavedModel     {metrics['export']}")
