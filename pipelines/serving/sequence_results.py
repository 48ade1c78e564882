"""Printing what an image-to-sequence export read: text per image, as lines or JSON.

A sequence export is recognised by its outputs (`text`, `tokens`, `scores`,
see `pipelines.serving.sequence`), so the same detection works for a local
SavedModel, REST and gRPC.

Example:
    >>> outputs = {"text": [b"4071"], "tokens": [[7, 3, 10, 4, 2]], "scores": [-0.02]}
    >>> print(format_texts(["a.png"], read_texts(outputs)))
    a.png
      text: 4071  (score -0.0200)
"""

import json

import numpy as np

#: Outputs that mark a sequence export.
SEQUENCE_KEYS = ("text", "tokens", "scores")


def is_sequence_output(outputs):
    """Whether signature outputs come from a sequence export."""
    return all(key in outputs for key in SEQUENCE_KEYS)


def read_texts(outputs):
    """`[(text, score), ...]` per image from the signature outputs."""
    texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
             for t in np.asarray(outputs["text"], dtype=object).reshape(-1)]
    scores = np.asarray(outputs["scores"], np.float64).reshape(-1)
    return [(text, float(score)) for text, score in zip(texts, scores)]


def format_texts(names, texts):
    """Printable block: each image name, then `  text: ...  (score ...)`."""
    lines = []
    for name, (text, score) in zip(names, texts):
        lines += [str(name), f"  text: {text}  (score {score:.4f})"]
    return "\n".join(lines)


def texts_json(names, texts):
    """JSON text `[{image, text, score}]`."""
    return json.dumps([{"image": name, "text": text, "score": score}
                       for name, (text, score) in zip(names, texts)], indent=2,
                      ensure_ascii=False)
