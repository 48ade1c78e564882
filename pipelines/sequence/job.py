"""`train_sequence(config)`: the image-to-sequence job, phase by phase, timed.

checks (options, outputs, run folder) -> data (`pipelines.sequence.data`: every
label and image checked, vocabulary from train) -> run folder -> teacher-forced
fit with the shared recipe (`pipelines.sequence.fit`) -> best weights ->
`best.keras`, test loss and token accuracy, exact-sequence accuracy and CER
with greedy and beam decoding, curves, cross-attention figure -> TF Serving
export with beam search in the graph (`pipelines.serving.sequence`) ->
`metrics.json`.

Example:
>>> metrics = train_sequence(SequenceConfig(dataset="digit_strings/small", epochs=1))
>>> metrics["test_exact_accuracy_beam"], metrics["test_cer_beam"]
"""

import dataclasses
import os
import time

from pipelines.onednn import compute_line, onednn_enabled
from pipelines.sequence.config import check_sequence_config
from pipelines.sequence.fit import (
    build_sequence_model,
    fit_sequence_model,
    plan_sequence_run,
    prepare_sequence_run,
)
from pipelines.training.config import check_tta_shift
from pipelines.training.job import Phases
from pipelines.training.preflight import check_outputs
from pipelines.training.run_folder import BEST_WEIGHTS, HISTORY_CSV, METRICS

#: Test images shown in the cross-attention figure.
ATTENTION_EXAMPLES = 4
ATTENTION_PNG = "cross_attention.png"


def _load(config, plan):
    from pipelines.sequence.data import load_sequence_data
    from pipelines.training.run_folder import backed_up_epoch

    # A resumed run continues from its backup's epoch: fresh strings start there.
    first_epoch = backed_up_epoch(config.output_dir) if plan == "resume" else 0
    return load_sequence_data(config.dataset, batch_size=config.batch_size,
                              max_length=config.max_length, image_size=config.image_size,
                              data_dir=config.data_dir, offline=config.offline, seed=config.seed,
                              augmentation=config.augmentation, fit_on=config.fit_on,
                              train_strings=config.train_strings, epochs=config.epochs,
                              first_epoch=first_epoch)


def train_sequence(config, log=print):
    """Runs the whole sequence job; returns the metrics written to `metrics.json`.

    Args:
        config: a `SequenceConfig` (unset fields take the preset).
        log: callable taking one message per line.

    Raises:
        ValueError: bad options, unusable folders, or bad data (naming the file,
            line or value); raised before anything is written.
    """
    config = config.resolved()
    check_sequence_config(config)
    check_outputs(config)  # the training job's: writable folders, free disk, model name
    plan = plan_sequence_run(config)
    import keras

    from pipelines.precision import choose_precision

    job_start, phases = time.perf_counter(), Phases()
    keras.utils.set_random_seed(config.seed)
    data = phases.timed("data", _load, config, plan)
    info = data.info
    policy, reason = choose_precision(config.precision, xla=config.xla)
    keras.config.set_dtype_policy(policy)
    try:
        build_sequence_model(config, info)  # a bad architecture fails before the run folder
        check_tta_shift(config.tta_shift, info.image_shape)
        log(f"dataset {info.name}: {info.num_train} train / {info.num_validation} validation / "
            f"{info.num_test} test images of shape {info.image_shape}; vocabulary "
            f"{''.join(info.vocab.characters)!r} ({info.vocab.size} tokens)")
        log(compute_line(policy, reason, config.xla))
        if config.train_strings == "fresh":
            from pipelines.sequence.fresh_strings import length_warmup_epochs

            warmup = length_warmup_epochs(config.epochs)
            log(f"training strings: new every epoch, from the {config.fit_on} digit images, "
                f"each digit augmented ({config.augmentation}) on its own"
                + (f"; 1 digit long at most in epoch 1, all lengths from epoch {warmup + 1}"
                   if warmup else ""))
        resumed = prepare_sequence_run(config, plan, info.vocab, log)
        fitted = phases.timed("fit", fit_sequence_model, config, data, log)
        metrics = {"task": "sequence", "dataset": info.name, "precision": policy,
                   "onednn": onednn_enabled(), "xla": config.xla, "epochs": config.epochs,
                   "resumed": resumed,
                   "vocabulary": "".join(info.vocab.characters), "max_length": config.max_length,
                   "beam_width": config.beam_width, "length_penalty": config.length_penalty,
                   "tta_shift": config.tta_shift, "fit_on": config.fit_on,
                   "train_strings": config.train_strings,
                   "split_origins": info.split_origins}
        _finish(config, data, fitted, metrics, phases, log)
        metrics["wall_seconds"] = time.perf_counter() - job_start
        from pipelines.reporting import write_json
        from pipelines.sequence.evaluation import log_sequence_summary

        write_json(os.path.join(config.output_dir, METRICS), metrics)
        log_sequence_summary(metrics, config.output_dir, log)
        return metrics
    finally:
        keras.config.set_dtype_policy("float32")


def _evaluate(config, model, data):
    """Best weights, `best.keras`, test loss/token accuracy and greedy/beam text scores."""
    from pipelines.sequence.evaluation import Decoder, decode_and_score, token_metrics

    best = os.path.join(config.output_dir, BEST_WEIGHTS)
    if os.path.exists(best):
        model.load_weights(best)
    model.save(os.path.join(config.output_dir, "best.keras"))
    model.jit_compile = False  # one pass over the small test split: not worth a compile
    scores = token_metrics(model, data.test)
    decoder = Decoder(model, data.info.vocab, config.beam_width, config.length_penalty,
                      config.tta_shift)
    scores.update(decode_and_score(decoder, data.test_images, data.test_texts))
    return decoder, scores


def write_sequence_artifacts(run_dir, decoder, data):
    """history.json, training curves and the cross-attention figure in `run_dir`."""
    from pipelines import reporting
    from pipelines.sequence.attention import cross_attention_maps, plot_cross_attention

    history = reporting.read_history_csv(os.path.join(run_dir, HISTORY_CSV))
    reporting.write_json(os.path.join(run_dir, "history.json"), history)
    reporting.plot_training_curves(history, os.path.join(run_dir, "training_curves.png"))
    images = data.test_images[:ATTENTION_EXAMPLES]
    tokens, _ = decoder.tokens(images, "greedy")
    maps = cross_attention_maps(decoder.model, images, tokens)
    plot_cross_attention(images, tokens, maps, data.info.vocab,
                         os.path.join(run_dir, ATTENTION_PNG),
                         texts=data.test_texts[:ATTENTION_EXAMPLES])


def _finish(config, data, fitted, metrics, phases, log):
    """Evaluation, artifacts and export, each timed; fills `metrics`."""
    decoder, scores = phases.timed("evaluate", _evaluate, config, fitted.model, data)
    metrics.update(scores)
    steady = fitted.epoch_seconds[1:] or fitted.epoch_seconds
    metrics.update({
        "model": fitted.model.name, "parameters": int(fitted.model.count_params()),
        "epochs_this_run": len(fitted.epoch_seconds), "train_wall_seconds": fitted.seconds,
        "train_images_per_second": (fitted.steps_per_epoch * config.batch_size
                                    / sorted(steady)[len(steady) // 2]) if steady else None,
        "epoch_seconds": [round(t, 3) for t in fitted.epoch_seconds],
        "config": dataclasses.asdict(config),
    })
    phases.timed("artifacts", write_sequence_artifacts, config.output_dir, decoder, data)
    if config.export:
        from pipelines.serving.sequence import export_sequence_model

        version = phases.timed(
            "export", export_sequence_model, fitted.model, data.info.vocab, config.model_name,
            config.export_dir, beam_width=config.beam_width,
            length_penalty=float(config.length_penalty), tta_shift=config.tta_shift,
            warmup_images=data.test_images[:4],
            verify=config.verify_export, verbose=bool(config.verbose))
        metrics["export"] = str(version)
        log(f"exported for TF Serving: {version}")
    metrics["artifacts"] = sorted(os.listdir(config.output_dir))
    metrics["phase_seconds"] = dict(phases)
