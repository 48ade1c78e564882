"""After the fit of a sequence model: test decoding (greedy and beam), scores, curves.

Example:
>>> decoder = Decoder(model, vocab, beam_width=4, length_penalty=0.6)
>>> texts, scores = decoder.texts(images, "beam")
>>> scores = decode_and_score(decoder, data.test_images, data.test_texts)
>>> scores["test_exact_accuracy_beam"], scores["test_cer_beam"]
"""

import time

import numpy as np

from pipelines.sequence.metrics import character_error_rate, exact_match_accuracy
from pipelines.sequence.vocab import END, PAD, START

#: Images decoded per call of the compiled decoding functions.
DECODE_BATCH = 256


class Decoder:
    """Greedy and beam decoding of a Keras `image_to_sequence` model, each traced once.

    Args:
        model: the model.
        vocab: its `CharVocabulary`.
        beam_width: int. Hypotheses kept by beam search.
        length_penalty: float. Beam search's GNMT alpha.
        tta_shift: int >= 0. Decode from the shifts of each image by up to
            this many pixels, averaging the views' probabilities
            (`keras_vit.models.shift_averaged_decode`); 0: one view.

    Example:
    >>> tokens, scores = Decoder(model, vocab, 4, 0.6).tokens(images, "greedy")
    """

    def __init__(self, model, vocab, beam_width, length_penalty, tta_shift=0):
        import tensorflow as tf

        from keras_vit.models import beam_search, greedy_decode
        from pipelines.sequence.executor import image_decoder

        self.model, self.vocab = model, vocab
        ids = {"start_id": START, "end_id": END, "pad_id": PAD}
        spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)]
        # As the export decodes: shift_averaged_decode with the decoding loop run
        # by the single-threaded executor (pipelines/sequence/executor.py).
        self._functions = {
            "greedy": tf.function(image_decoder(greedy_decode, model, tta_shift, **ids),
                                  input_signature=spec),
            "beam": tf.function(image_decoder(beam_search, model, tta_shift,
                                              beam_width=beam_width,
                                              length_penalty=length_penalty, **ids),
                                input_signature=spec),
        }

    def tokens(self, images, method):
        """`(tokens int32 (N, max_length), scores float32 (N,))` of float pixel images."""
        images = np.asarray(images, np.float32)
        tokens, scores = [], []
        for start in range(0, len(images), DECODE_BATCH):
            batch_tokens, batch_scores = self._functions[method](images[start:start + DECODE_BATCH])
            tokens.append(batch_tokens.numpy())
            scores.append(batch_scores.numpy())
        return np.concatenate(tokens), np.concatenate(scores)

    def texts(self, images, method):
        """`(list of str, scores)`: the decoded texts of `images`."""
        tokens, scores = self.tokens(images, method)
        return [self.vocab.decode(row) for row in tokens], scores


def decode_and_score(decoder, images, texts):
    """Exact-sequence accuracy and CER of greedy and beam decoding, and their speed.

    Returns:
        dict with `test_exact_accuracy_{greedy,beam}`, `test_cer_{greedy,beam}`,
        `decode_images_per_second_{greedy,beam}` and a few `examples`.
    """
    scores, predictions = {}, {}
    for method in ("greedy", "beam"):
        decoder.tokens(images[:2], method)  # trace outside the timing
        start = time.perf_counter()
        predicted, _ = decoder.texts(images, method)
        seconds = time.perf_counter() - start
        predictions[method] = predicted
        scores[f"test_exact_accuracy_{method}"] = exact_match_accuracy(texts, predicted)
        scores[f"test_cer_{method}"] = character_error_rate(texts, predicted)
        scores[f"decode_images_per_second_{method}"] = float(len(images) / max(seconds, 1e-9))
    scores["examples"] = [{"text": t, "greedy": g, "beam": b} for t, g, b in
                          zip(texts[:8], predictions["greedy"][:8], predictions["beam"][:8])]
    return scores


def token_metrics(model, test):
    """Test loss and token accuracy (padding excluded) under teacher forcing."""
    results = model.evaluate(test, verbose=0, return_dict=True)
    return {"test_loss": float(results["loss"]),
            "test_token_accuracy": float(results.get("accuracy", np.nan))}


def plot_sequence_curves(history, path):
    """Loss and token accuracy per epoch (`pipelines.reporting.plot_training_curves`)."""
    from pipelines.reporting import plot_training_curves

    plot_training_curves(history, path)


def log_sequence_summary(metrics, run_dir, log):
    """The closing lines: exact accuracy and CER, greedy and beam; speeds and folders."""
    log("")
    for method in ("greedy", "beam"):
        log(f"test {method:<6} exact-sequence accuracy {metrics[f'test_exact_accuracy_{method}']:.4f}"
            f"   CER {metrics[f'test_cer_{method}']:.4f}")
    log(f"parameters     {metrics['parameters']:,}; precision {metrics['precision']}; "
        f"wall {metrics['wall_seconds']:.0f} s")
    log(f"run folder     {run_dir}")
    if "export" in metrics:
        log(f"SavedModel     {metrics['export']}")
