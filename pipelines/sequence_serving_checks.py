"""Check an exported sequence (image-to-text) SavedModel without our code, as a server would.

`pipelines.serving.sequence_verification.verify_sequence_export` runs this file
in a fresh interpreter (`python -I pipelines/sequence_serving_checks.py ...`).
It loads its sibling `serving_checks.py` by path (for the import blocker and
the request helpers), blocks `keras_vit`, `pipelines` and `keras`, and checks:

* both signatures: inputs as for every export, outputs `tokens` int32
  `[batch, max_length]`, `text` string `[batch]`, `scores` float32 `[batch]`;
* `serving_default` on the sample images gives exactly the expected (Keras
  beam search) tokens, the expected texts and scores within `--atol`;
  `serving_bytes` on their PNG files gives the same;
* `text` is the tokens read through the vocabulary (up to the end token);
* bad requests (wrong size, NaN pixels, a non-image file) fail with
  INVALID_ARGUMENT; an empty batch gives empty outputs; the model still works;
* every warm-up record replays.

The last stdout line is `SERVING_CHECKS_REPORT {json}`.

Example:
    python -I pipelines/sequence_serving_checks.py --export-dir savedmodels/seq/1 \\
        --samples samples.npz --png a.png b.png --vocab vocab.json --atol 1e-4
"""

import importlib.util
import pathlib
import sys


def _load_serving_checks():
    path = pathlib.Path(__file__).resolve().with_name("serving_checks.py")
    spec = importlib.util.spec_from_file_location("keras_vit_serving_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _load_serving_checks()
if __name__ == "__main__":  # block before TensorFlow (or anything) gets imported
    base.install_import_blocker()

import argparse  # noqa: E402  (after the import blocker, on purpose)
import json  # noqa: E402

import numpy as np  # noqa: E402

OUTPUTS = {"tokens": "int32", "text": "string", "scores": "float32"}
_require = base._require
CheckFailed = base.CheckFailed


def check_specs(loaded):
    """Signatures, inputs and the three outputs; returns `(image_shape, max_length)`."""
    _require({base.SERVING_DEFAULT, base.SERVING_BYTES} <= set(loaded.signatures),
             f"missing signatures, found {sorted(loaded.signatures)}")
    found = {}
    for name, input_name, dtype in ((base.SERVING_DEFAULT, base.IMAGES_INPUT, "float32"),
                                    (base.SERVING_BYTES, base.BYTES_INPUT, "string")):
        function = loaded.signatures[name]
        inputs = function.structured_input_signature[1]
        _require(set(inputs) == {input_name}, f"{name} inputs are {sorted(inputs)}")
        _require(inputs[input_name].dtype.name == dtype, f"{name} input is not {dtype}")
        _require(inputs[input_name].shape[0] is None, f"{name} batch is not dynamic")
        outputs = function.structured_outputs
        _require(set(outputs) == set(OUTPUTS), f"{name} outputs are {sorted(outputs)}")
        for key, expected in OUTPUTS.items():
            _require(outputs[key].dtype.name == expected,
                     f"{name} output {key} is {outputs[key].dtype.name}, expected {expected}")
            _require(outputs[key].shape[0] is None, f"{name} output {key} batch is not dynamic")
        found[name] = (inputs[input_name], outputs)
    image_spec, outputs = found[base.SERVING_DEFAULT]
    return tuple(int(d) for d in image_spec.shape[1:]), int(outputs["tokens"].shape[1])


def read_tokens(tokens, strings, end_id):
    """Python reference of the in-graph lookup: characters up to the end token."""
    texts = []
    for row in np.asarray(tokens).tolist():
        row = row[:row.index(end_id)] if end_id in row else row
        texts.append("".join(strings[t] for t in row))
    return texts


def check_outputs(loaded, images, png_files, expected, vocab, atol):
    """Both signatures against the expected tokens/texts/scores and each other."""
    float_out = base.call_signature(loaded, base.SERVING_DEFAULT, {base.IMAGES_INPUT: images})
    bytes_out = base.call_signature(loaded, base.SERVING_BYTES,
                                    {base.BYTES_INPUT: np.array(png_files, dtype=object)})
    strings = [""] * len(vocab["special_tokens"]) + vocab["characters"]
    details = {}
    for name, outputs in ((base.SERVING_DEFAULT, float_out), (base.SERVING_BYTES, bytes_out)):
        texts = [t.decode("utf-8") for t in outputs["text"]]
        _require(texts == read_tokens(outputs["tokens"], strings, vocab["end_id"]),
                 f"{name} text {texts} is not its tokens read through the vocabulary")
        if expected is not None:
            _require(np.array_equal(outputs["tokens"], expected["tokens"]),
                     f"{name} tokens {outputs['tokens'].tolist()} differ from Keras "
                     f"{expected['tokens'].tolist()}")
            diff = float(np.max(np.abs(outputs["scores"] - expected["scores"]), initial=0.0))
            _require(diff <= atol, f"{name} scores differ from Keras by {diff:.3g} > {atol}")
            details[name] = f"tokens equal Keras beam search; texts {texts[:4]}; " \
                            f"max |score diff| {diff:.1e}"
    _require(np.array_equal(float_out["tokens"], bytes_out["tokens"]),
             "serving_bytes tokens differ from serving_default")
    details["bytes vs float"] = "same tokens and text"
    return details


def check_bad_inputs(loaded, image_shape, max_length, good_images, good_png):
    """Bad requests fail with INVALID_ARGUMENT; empty batches are empty; still serving."""
    height, width, channels = image_shape
    nan_images = np.array(good_images[:1], np.float32)
    nan_images[0, 0, 0, 0] = np.nan
    call = base.call_signature
    results = {
        "wrong size": base._expect_invalid_argument(lambda: call(
            loaded, base.SERVING_DEFAULT,
            {base.IMAGES_INPUT: np.zeros((1, height + 1, width, channels), np.float32)}),
            "an image of the wrong size"),
        "NaN pixels": base._expect_invalid_argument(lambda: call(
            loaded, base.SERVING_DEFAULT, {base.IMAGES_INPUT: nan_images}), "NaN pixels"),
        "not an image": base._expect_invalid_argument(lambda: call(
            loaded, base.SERVING_BYTES,
            {base.BYTES_INPUT: np.array([good_png, b"not an image"], object)}),
            "a non-image file"),
    }
    empty = call(loaded, base.SERVING_DEFAULT,
                 {base.IMAGES_INPUT: np.zeros((0, *image_shape), np.float32)})
    empty_bytes = call(loaded, base.SERVING_BYTES, {base.BYTES_INPUT: np.array([], object)})
    for outputs in (empty, empty_bytes):
        _require(outputs["tokens"].shape == (0, max_length) and outputs["text"].shape == (0,),
                 f"empty batch gave tokens {outputs['tokens'].shape}")
    after = call(loaded, base.SERVING_DEFAULT, {base.IMAGES_INPUT: good_images[:1]})
    _require(after["tokens"].shape == (1, max_length), "model broken after bad requests")
    results["empty batch"] = f"tokens shape (0, {max_length}), text shape (0,)"
    return results


def replay_warmup(loaded, export_dir):
    """Replays every warm-up PredictionLog; returns the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = pathlib.Path(export_dir) / base.WARMUP_RELATIVE_PATH
    _require(path.exists(), f"no warm-up file at {path}")
    count, signatures = 0, set()
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        request = log.predict_log.request
        name = request.model_spec.signature_name or base.SERVING_DEFAULT
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = base.call_signature(loaded, name, inputs)
        _require(len(outputs["text"]) == len(next(iter(inputs.values()))),
                 f"warm-up {name} batch mismatch")
        count, signatures = count + 1, signatures | {name}
    _require({base.SERVING_DEFAULT, base.SERVING_BYTES} <= signatures,
             f"warm-up covers only {signatures}")
    return count


def run_checks(export_dir, images, png_files, vocab, expected=None, atol=1e-4):
    """Every check on `export_dir`; the report dict."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    image_shape, max_length = check_specs(loaded)
    _require(tuple(images.shape[1:]) == image_shape,
             f"sample images {images.shape} do not fit {image_shape}")
    checks = {"signatures": f"images {image_shape} float32, images_bytes string; outputs "
                            f"tokens int32 (-1, {max_length}), text string, scores float32"}
    for name, detail in check_outputs(loaded, images, png_files, expected, vocab, atol).items():
        checks[f"predictions {name}"] = detail
    for name, detail in check_bad_inputs(loaded, image_shape, max_length, images,
                                         png_files[0]).items():
        checks[f"bad input: {name}"] = detail
    checks["warm-up replay"] = f"{replay_warmup(loaded, export_dir)} records"
    leaked = sorted(name for name in sys.modules
                    if name.partition(".")[0] in base.BLOCKED_PACKAGES)
    _require(not leaked, f"modules that should not be needed were imported: {leaked}")
    checks["self-contained"] = "loaded and ran without keras_vit, pipelines or keras"
    return {"checks": checks, "image_shape": image_shape, "max_length": max_length}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--samples", required=True, help=".npz: images (tokens, scores)")
    parser.add_argument("--png", nargs="+", required=True, help="PNG files of the same images")
    parser.add_argument("--vocab", required=True, help="the vocab.json of the model")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    samples = np.load(args.samples)
    expected = ({"tokens": samples["tokens"], "scores": samples["scores"]}
                if "tokens" in samples.files else None)
    vocab = json.loads(pathlib.Path(args.vocab).read_text(encoding="utf-8"))
    png_files = [pathlib.Path(path).read_bytes() for path in args.png]
    report = run_checks(args.export_dir, samples["images"].astype(np.float32), png_files, vocab,
                        expected, args.atol)
    print("SERVING_CHECKS_REPORT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
