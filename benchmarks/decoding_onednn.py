"""The decoding loops alone at batch 1 with oneDNN on and off, one fresh process per setting.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, at import, so the two settings
cannot share a process: `contrast(lengths)` starts
`python -m benchmarks.decoding_onednn LENGTH ...` once with `1` and
once with `0`. Each worker builds the decoding benchmark's model
(`bench_decoding.build_model`), encodes one image, and times the cached loop
(`greedy_decode` on the encoder output) and the recomputing loop
(`DecoderSteps.prefix_logits` over the growing prefix) as graphs, every length
interleaved call by call (`common.interleave`), medians, and prints them as
one JSON line (`common.run_worker` reads it).

Why: on an AVX2-only CPU oneDNN slows the recomputing loop's tiny matmuls
over a prefix that grows each step far more than it slows the cached loop,
so the recompute/cached ratio under keras-vit's default (oneDNN on) is
partly oneDNN's (benchmarks/README.md, session 20).

Example:
    python -m benchmarks.decoding_onednn 5 20
"""

import json
import os
import sys

from benchmarks import common

SETTINGS = ("1", "0")


def measure(lengths, min_rounds=20, min_time=0.5):
    """`{length: {"cached_ms", "recompute_ms"}}` medians at batch 1 in this process.

    Example:
        >>> measure([5])["5"]["cached_ms"] > 0
        True
    """
    import statistics

    import keras
    import numpy as np

    from benchmarks.bench_decoding import IMAGE_SHAPE, build_model, decoders, unused_token
    from keras_vit.models.decoder_steps import decoder_steps

    # The weights `bench_decoding.run` decodes with: an unseeded model may have a
    # near-tie where the two loops' roundings pick different tokens (seen once).
    keras.utils.set_random_seed(0)
    model = build_model()
    images = np.random.default_rng(0).uniform(0, 255, (1,) + IMAGE_SHAPE).astype("float32")
    end_id = unused_token(model, images, max(lengths))
    memory, _ = decoder_steps(model).encode(images)
    calls = {}
    for length in lengths:
        _, (cached, recompute) = decoders(model, length, end_id)
        np.testing.assert_array_equal(cached(memory).numpy(), recompute(memory).numpy())
        calls[f"cached {length}"] = lambda f=cached: f(memory)
        calls[f"recompute {length}"] = lambda f=recompute: f(memory)
    timings = common.interleave(calls, min_rounds=min_rounds, min_time=min_time,
                                max_rounds=400, warmup=2)
    return {str(length): {kind + "_ms": 1e3 * statistics.median(
                timings[f"{kind} {length}"]["wall"]) for kind in ("cached", "recompute")}
            for length in lengths}


def contrast(lengths, timeout=900):
    """`{setting: measure(lengths)}` for `TF_ENABLE_ONEDNN_OPTS` 1 and 0, each in its own process.

    Raises:
        RuntimeError: a worker failed (`common.run_worker`), or
            its TensorFlow did not take the setting.
    """
    results = {}
    for setting in SETTINGS:
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, KERAS_BACKEND="tensorflow")
        worker = common.run_worker("benchmarks.decoding_onednn", lengths, env=env,
                                   timeout=timeout)
        if worker["onednn"] not in (None, setting == "1"):  # None: TensorFlow does not say
            raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} did not take effect in the "
                               f"worker (oneDNN enabled: {worker['onednn']})")
        results[setting] = worker["loops"]
    return results


def table_rows(results):
    """Rows `[oneDNN, length, cached ms, recompute ms, ratio]` of `contrast`'s result."""
    return [["on" if setting == "1" else "off", length, f"{row['cached_ms']:.2f}",
             f"{row['recompute_ms']:.2f}", f"{row['recompute_ms'] / row['cached_ms']:.2f}"]
            for setting, per_length in results.items() for length, row in per_length.items()]


def main(argv):
    from pipelines.onednn import onednn_enabled

    lengths = [int(length) for length in argv]
    print(json.dumps({"onednn": onednn_enabled(), "loops": measure(lengths)}))


if __name__ == "__main__":
    main(sys.argv[1:])
