"""The run folder and the fit of a sequence run: plan, model, recipe, teacher-forced training.

The run folder is the classifier's (`pipelines.training.run_folder`): the same
files, callbacks (CSV history, best checkpoint on `val_accuracy`, TensorBoard,
BackupAndRestore) and the same rules: a finished run is never silently reused
(`--overwrite` moves it aside), a killed one resumes only with the options it
started with (`--restart` moves it aside). `vocab.json` is written next to
`run_config.json`, and a resume also needs the data to give that vocabulary.

Example:
>>> plan = plan_sequence_run(config)           # before any data is read
>>> resumed = prepare_sequence_run(config, plan, data.info.vocab, log=print)
>>> outcome = fit_sequence_model(config, data, log=print)
"""

import os
import time

from pipelines.sequence.config import RUN_DEFINING_OPTIONS, model_kwargs
from pipelines.sequence.vocab import VOCAB_FILENAME, CharVocabulary
from pipelines.training.config import recipe_of
from pipelines.training.fit import FitOutcome
from pipelines.training.run_folder import (
    best_so_far,
    epoch_timer,
    plan_run_dir,
    prepare_run_dir,
    training_callbacks,
)


def plan_sequence_run(config):
    """`"new"`, `"resume"` or `"replace"` for the run folder; nothing is touched.

    The training job's planner (`plan_run_dir`) with the sequence task's
    run-defining options.

    Raises:
        ValueError: a finished run without `--overwrite`, or a killed run with
            other run-defining options without `--restart`.
    """
    return plan_run_dir(config, RUN_DEFINING_OPTIONS)


def prepare_sequence_run(config, plan, vocab, log):
    """Acts on the plan (`prepare_run_dir`); a new folder also gets `vocab.json`.

    A resumed run must read the same characters as the run it continues: its
    weights map token ids to the saved vocabulary, so a run whose data now
    gives another one (a labels.csv edited between the runs) is refused
    before anything is written.

    Returns:
        bool: whether the run resumes.

    Raises:
        ValueError: resuming with another vocabulary than the run's `vocab.json`.
    """
    vocab_path = os.path.join(config.output_dir, VOCAB_FILENAME)
    if plan == "resume" and os.path.exists(vocab_path):
        saved = CharVocabulary.load(vocab_path)
        if saved != vocab:
            raise ValueError(
                f"cannot resume the interrupted run in {config.output_dir}: its vocabulary "
                f"{''.join(saved.characters)!r} ({vocab_path}) differs from the data's "
                f"{''.join(vocab.characters)!r}; pass the run's data to resume it, or "
                "--restart to move it aside and start over")
    resumed = prepare_run_dir(config, plan, log)
    if not resumed:
        vocab.save(vocab_path)
    return resumed


def build_sequence_model(config, info):
    """The run's `image_to_sequence` model (uncompiled)."""
    from keras_vit.models import image_to_sequence

    return image_to_sequence(**model_kwargs(config, info))


def compile_sequence_model(model, config, vocab_size, total_steps):
    """Compiles with the shared recipe: AdamW, warm-up + cosine, clipping, smoothed loss.

    Targets are one-hot `(B, T, V)` and padding carries weight 0, so the
    recipe's loss and its token accuracy (a weighted metric) skip padding.
    """
    recipe = recipe_of(config)
    model.compile(recipe.optimizer(total_steps), recipe.loss(vocab_size),
                  weighted_metrics=recipe.metrics(vocab_size), jit_compile=config.xla)
    model.optimizer.build(model.trainable_variables)  # slots exist for a resumed backup
    return model


def fit_sequence_model(config, data, log):
    """Builds, compiles and trains the model in `config.output_dir`; a `FitOutcome`."""
    import keras

    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = data.steps_per_epoch
    model = compile_sequence_model(build_sequence_model(config, data.info), config,
                                   data.info.vocab.size, config.epochs * steps_per_epoch)
    log(f"model {model.name}: {model.count_params():,} parameters; {steps_per_epoch} steps "
        f"per epoch")
    run_dir = config.output_dir
    timer = epoch_timer()
    start = time.perf_counter()
    validate = config.fit_on == "train"  # else validation is part of the training data
    # One repeated iterator for the whole run, as the classifier's fit
    # (`pipelines.training.fit`): no per-epoch tf.data iterator teardown.
    # Fresh strings already hold every epoch left (`repeat` never wraps).
    model.fit(data.train.repeat(), steps_per_epoch=steps_per_epoch,
              validation_data=data.validation if validate else None, epochs=config.epochs,
              callbacks=training_callbacks(run_dir, best_so_far(run_dir), timer,
                                           keep_best=validate),
              verbose=config.verbose)
    return FitOutcome(model=model, epoch_seconds=timer.seconds,
                      steps_per_epoch=steps_per_epoch, seconds=time.perf_counter() - start)
