"""Turning signature outputs into ranked `(label, score)` lists, text and JSON.

Example:
    >>> pairs = top_k_predictions({"top_k_classes": [[1, 0]], "top_k_scores": [[0.7, 0.3]]})
    >>> print(format_predictions(["cat.jpg"], pairs))
    cat.jpg
      1. 1  0.7000
      2. 0  0.3000
"""

import json

import numpy as np

from pipelines.serving.contract import LABELS_OUTPUT


def _label(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def top_k_predictions(outputs, top_k=None):
    """Per image, `[(label, score), ...]` from the signature outputs.

    Labels come from `top_k_labels` when the model was exported with class names,
    else the class index. `top_k` truncates what the export returns.

    Example:
        >>> top_k_predictions({"top_k_classes": [[1, 0]], "top_k_scores": [[0.7, 0.3]]})
        [[('1', 0.7), ('0', 0.3)]]
    """
    classes = np.asarray(outputs["top_k_classes"])
    scores = np.asarray(outputs["top_k_scores"], np.float64)
    labels = outputs.get(LABELS_OUTPUT)
    results = []
    for i in range(len(classes)):
        names = labels[i] if labels is not None else classes[i]
        pairs = [(_label(name), float(score)) for name, score in zip(names, scores[i])]
        results.append(pairs[:top_k] if top_k else pairs)
    return results


def format_predictions(names, predictions):
    """Printable block: each image name, then its ranked `label  score` lines.

    Example:
        >>> format_predictions(["x.png"], [[("cat", 0.91234), ("bird", 0.05)]])
        'x.png\\n  1. cat   0.9123\\n  2. bird  0.0500'
    """
    lines = []
    for name, pairs in zip(names, predictions):
        lines.append(str(name))
        width = max([len(label) for label, _ in pairs] + [1])
        for rank, (label, score) in enumerate(pairs, 1):
            lines.append(f"  {rank}. {label:<{width}}  {score:.4f}")
    return "\n".join(lines)


def predictions_json(names, predictions):
    """JSON text `[{image, predictions: [{label, score}]}]`.

    Example:
        >>> json.loads(predictions_json(["x.png"], [[("cat", 0.5)]]))[0]["predictions"]
        [{'label': 'cat', 'score': 0.5}]
    """
    rows = [
        {"image": name, "predictions": [{"label": lab, "score": sc} for lab, sc in pairs]}
        for name, pairs in zip(names, predictions)
    ]
    return json.dumps(rows, indent=2)
