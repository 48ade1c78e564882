"""Classical baselines measured beside the ViT in the same run, on the same split."""

import time

import numpy as np
from sklearn.svm import SVC


def dataset_to_numpy(dataset, limit=20_000):
    """Materialise a batched `(image, label)` dataset as numpy arrays (at most `limit`)."""
    images, labels = [], []
    count = 0
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        count += len(batch_labels)
        if count >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def svc_baseline(train, test):
    """Test accuracy of scikit-learn's `SVC()` with default settings on flattened pixels.

    Args:
        train: `(images, labels)` numpy arrays, images in [0, 255].
        test: `(images, labels)` numpy arrays.

    Returns:
        dict with `accuracy` and `seconds`.

    Example:
    >>> svc_baseline((x_train, y_train), (x_test, y_test))["accuracy"]
    """
    start = time.perf_counter()
    # Pixels scaled to [0, 1]: SVC's default gamma="scale" makes the result scale-free.
    def flat(images):
        return images.reshape(len(images), -1) / 255.0
    classifier = SVC().fit(flat(train[0]), train[1])
    accuracy = float(np.mean(classifier.predict(flat(test[0])) == test[1]))
    return {"accuracy": accuracy, "seconds": time.perf_counter() - start}
