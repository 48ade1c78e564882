"""`python -m benchmarks.train_probe OUT.json -- TRAIN-ARGS...`: the training job, timed per step.

Runs `keras-vit train TRAIN-ARGS` in this process, unchanged except for one
extra Keras callback (appended to the job's own callback list at run time; the
job's code is not modified) that records the wall time of every training and
validation batch and of every epoch's parts. With the job's own
`metrics.json` (`phase_seconds`, `epoch_seconds`) this says where the job's
time goes: imports, data, the first step (tracing + XLA compilation), steady
steps, validation, callbacks at the epoch end, and any later step that is
slow because something was traced or compiled again.

Written to OUT.json:

- `import_seconds`: `import tensorflow, keras` and the job module;
- `epochs`: per epoch, `train_step_seconds` (each batch, from
  `on_train_batch_begin` to `on_train_batch_end`), `between_steps_seconds`
  (from one batch's end to the next one's begin: input pipeline and
  callbacks), `validation_seconds`, `validation_step_seconds`, and
  `seconds` (the whole epoch, validation included);
- `stalls`: where the main thread was, sampled every 0.25 s while an epoch
  had begun but its first step had not yet ended (the "second compile" hunt):
  per epoch and phase (`before_first_step`, `first_step`), the most frequent
  Python stacks (innermost frames last) with their sample counts;
- `full_gc`: `[started_at, seconds, objects collected]` of every full
  (generation 2) garbage collection over 50 ms: a pause the stack sampler
  would attribute to whatever Python line triggered it;
- `exit_code`: the job's.

Example:
    python -m benchmarks.train_probe /tmp/probe.json -- --epochs 3 --no-export \
        --no-baseline --output-dir /tmp/run
"""

import collections
import gc
import json
import sys
import threading
import time
import traceback

PROBE_START = time.perf_counter()  # `began_at` of each epoch counts from here


class GcTimer:
    """Records every garbage collection of generation 2 (full) taking over 50 ms."""

    def __init__(self):
        self.collections = []  # [started_at (s from PROBE_START), seconds, objects collected]
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        elif (seconds := time.perf_counter() - self._start) > 0.05:
            self.collections.append([self._start - PROBE_START, seconds, info["collected"]])


SAMPLE_SECONDS = 0.25
STACK_DEPTH = 10  # innermost frames kept per sample


class StallSampler:
    """Samples the main thread's Python stack while `phase` is set (a daemon thread)."""

    def __init__(self):
        self.phase = None  # (epoch, "before_first_step" | "first_step") or None
        self.samples = collections.defaultdict(collections.Counter)
        self._main = threading.main_thread().ident
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            time.sleep(SAMPLE_SECONDS)
            phase = self.phase
            frame = sys._current_frames().get(self._main)
            if phase is None or frame is None:
                continue
            stack = traceback.extract_stack(frame)[-STACK_DEPTH:]
            key = " <- ".join(f"{entry.name} ({entry.filename.rsplit('site-packages/', 1)[-1]}"
                              f":{entry.lineno})" for entry in reversed(stack))
            self.samples[phase][key] += 1

    def report(self, top=3):
        """`[{"epoch", "phase", "seconds_sampled", "stacks": [[count, stack], ...]}]`."""
        return [dict(epoch=epoch, phase=phase,
                     seconds_sampled=sum(counter.values()) * SAMPLE_SECONDS,
                     stacks=[[count, stack] for stack, count in counter.most_common(top)])
                for (epoch, phase), counter in sorted(self.samples.items())]


def step_recorder(sampler=None):
    """A Keras callback recording per-batch and per-epoch wall times in `epochs`.

    Args:
        sampler: optional `StallSampler` whose `phase` it sets from the epoch's
            begin to its first step's end.
    """
    import keras

    class StepRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []
            self._last_end = None

        def _phase(self, name):
            if sampler is not None:
                sampler.phase = None if name is None else (len(self.epochs) - 1, name)

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(dict(epoch=epoch, began_at=time.perf_counter() - PROBE_START,
                                    train_step_seconds=[],
                                    between_steps_seconds=[], validation_step_seconds=[]))
            self._epoch_start = self._last_end = time.perf_counter()
            self._phase("before_first_step")

        def on_train_batch_begin(self, batch, logs=None):
            now = time.perf_counter()
            self.epochs[-1]["between_steps_seconds"].append(now - self._last_end)
            self._step_start = now
            if batch == 0:
                self._phase("first_step")

        def on_train_batch_end(self, batch, logs=None):
            self._last_end = time.perf_counter()
            self.epochs[-1]["train_step_seconds"].append(self._last_end - self._step_start)
            self._phase(None)

        def on_test_begin(self, logs=None):
            self._test_start = time.perf_counter()

        def on_test_batch_begin(self, batch, logs=None):
            self._test_step_start = time.perf_counter()

        def on_test_batch_end(self, batch, logs=None):
            if self.epochs:  # evaluate() outside fit has no epoch
                self.epochs[-1]["validation_step_seconds"].append(
                    time.perf_counter() - self._test_step_start)

        def on_test_end(self, logs=None):
            if self.epochs:
                self.epochs[-1]["validation_seconds"] = time.perf_counter() - self._test_start

        def on_epoch_end(self, epoch, logs=None):
            record = self.epochs[-1]
            record["seconds"] = time.perf_counter() - self._epoch_start
            # Validation runs between the last step and here; the job's own
            # epoch-end callbacks (checkpoints, CSV, TensorBoard, backup) run
            # after this one: they show in the gap to the next `began_at`.
            record["after_last_step_seconds"] = time.perf_counter() - self._last_end

    return StepRecorder()


def run_probed(train_argv):
    """Runs `pipelines.train.main(train_argv)` with a `step_recorder`; returns the record."""
    start = time.perf_counter()
    import keras  # noqa: F401  (timed: the import cost the job pays)
    import tensorflow  # noqa: F401

    from pipelines import train as train_job
    from pipelines.training import fit as fit_module  # builds the job's callback list

    import_seconds = time.perf_counter() - start
    gc_timer = GcTimer()
    sampler = StallSampler()
    recorder = step_recorder(sampler)
    original = fit_module.training_callbacks

    def callbacks_with_recorder(*args, **kwargs):
        # First in the list, so its epoch time brackets the job's own callbacks.
        return [recorder] + original(*args, **kwargs)

    fit_module.training_callbacks = callbacks_with_recorder
    try:
        exit_code = train_job.main(train_argv)
    finally:
        fit_module.training_callbacks = original
    return dict(import_seconds=import_seconds, exit_code=exit_code, epochs=recorder.epochs,
                stalls=sampler.report(), full_gc=gc_timer.collections)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 1 or (len(argv) > 1 and argv[1] != "--"):
        print("usage: python -m benchmarks.train_probe OUT.json [-- TRAIN-ARGS...]",
              file=sys.stderr)
        return 2
    out, train_argv = argv[0], argv[2:]
    record = run_probed(train_argv)
    with open(out, "w") as handle:
        json.dump(record, handle, indent=2)
    return record["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
