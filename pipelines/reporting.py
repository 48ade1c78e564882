"""Run-folder artifacts: metrics, history, training curves, confusion matrix, attention maps."""

import csv
import json
import os

import matplotlib

matplotlib.use("Agg")  # No display on training machines.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_json(path, payload):
    """Writes `payload` as indented JSON through a temporary file, so readers never see half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def read_history_csv(path):
    """Per-epoch metrics from Keras' `CSVLogger` file (complete across resumed runs)."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    # A run killed between writing a row and backing up its epoch repeats that
    # epoch when resumed: keep the last row of each epoch.
    by_epoch = {row.get("epoch", str(index)): row for index, row in enumerate(rows)}
    rows = [by_epoch[key] for key in sorted(by_epoch, key=float)]
    # CSVLogger always writes val_* columns, "NA" in a fit without validation
    # (`--fit-on train+validation`): such columns are left out.
    columns = [key for key in (rows[0] if rows else {})
               if any(row[key] != "NA" for row in rows)]
    return {key: [float(row[key]) for row in rows] for key in columns}


def plot_training_curves(history, path):
    """Loss and accuracy per epoch, training against validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.asarray(history.get("epoch", range(len(history.get("loss", []))))) + 1
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + metric in history:
                axis.plot(epochs, history[prefix + metric], label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def confusion_matrix(labels, predictions, num_classes):
    """`(K, K)` counts: rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def plot_confusion_matrix(matrix, class_names, path, title="test confusion matrix"):
    """Heat map of `matrix` with the counts written in each cell (up to 30 classes)."""
    size = max(4, 0.5 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 10 else 0)
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            axis.text(col, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_attention_maps(images, maps, titles, path):
    """Images beside their attention-rollout maps, upsampled to the image size."""
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False)
    for index in range(count):
        image = np.asarray(images[index], dtype="float32") / 255.0
        height, width = image.shape[:2]
        shown = image[..., 0] if image.shape[-1] == 1 else np.clip(image[..., :3], 0, 1)
        cmap = "gray" if image.shape[-1] == 1 else None
        axes[0, index].imshow(shown, cmap=cmap, vmin=0, vmax=1)
        axes[0, index].set_title(titles[index], fontsize=8)
        axes[1, index].imshow(shown, cmap=cmap, vmin=0, vmax=1)
        axes[1, index].imshow(maps[index], cmap="jet", alpha=0.5,
                              extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                              interpolation="bilinear")
        for axis in axes[:, index]:
            axis.axis("off")
    axes[1, 0].set_title("attention rollout", fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
