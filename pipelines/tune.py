"""`keras-vit tune`: search ViT hyperparameters with keras-tuner and export the winner.

The job: data (`pipelines.data`, the sources of `keras-vit train`) -> precision
choice (`pipelines.precision`) -> `keras_vit.tuning.ViTHyperModel` with the
search space narrowed or widened by `--space`/`--space-file` -> keras-tuner
(random, hyperband, bayesian or grid) -> leaderboard (printed, CSV, JSON, PNG)
-> best model (as trained in its trial, or retrained) -> TF Serving export.
The parts live in `pipelines.tuning`; this entry
module keeps the public names in one place.

Run folder `<output-dir>/<project-name>/` (default `runs/tune_<dataset>/search/`):
keras-tuner's `oracle.json`, `tuner*.json` and `trial_*/` (each with a
`worker.json` naming the tuner that ran it), plus `search_space.json`,
`leaderboard.csv`, `leaderboard.json`, `leaderboard.png` and `summary.json`.

Starting the job again with the same folder resumes the search: finished trials
are kept and the interrupted one is run again (keras-tuner reloads with
`overwrite=False`); `--overwrite` starts over.

Distributed tuning uses keras-tuner's chief/worker mode: set
`KERASTUNER_TUNER_ID` (`chief`, `tuner0`, `tuner1`, ...),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` in every process and run the
same command; the chief serves the oracle, the workers run the trials, and the
chief writes the leaderboard and exports once the search is over (see
docs/tuning.md).

Example:
    keras-vit tune --max-trials 20 --epochs 30
    keras-vit tune --tuner hyperband --epochs 27 --space depth=2,4,6 \\
        --space learning_rate=1e-4:3e-3:log --space pooling=gap
    python -m pipelines.tune --help
"""

import sys

from pipelines.options import DEFAULT_DATASET, TUNERS
from pipelines.tuning.cli import build_parser, main
from pipelines.tuning.config import DEFAULT_PROJECT, TuneConfig, check_config
from pipelines.tuning.job import SearchContext, TuneData, load_tune_data, tune
from pipelines.tuning.leaderboard import (
    format_leaderboard,
    leaderboard_rows,
    plot_leaderboard,
    searched_keys,
    write_leaderboard,
)
from pipelines.tuning.space_input import (
    check_space_unchanged,
    load_space,
    parse_objective,
    parse_space_arg,
)
from pipelines.tuning.tuners import (
    WORKER_FILE,
    distributed_role,
    interrupted_trials,
    make_tuner,
    trial_worker,
)

__all__ = ["DEFAULT_DATASET", "DEFAULT_PROJECT", "SearchContext", "TUNERS", "TuneConfig",
           "TuneData", "WORKER_FILE", "build_parser", "check_config", "check_space_unchanged",
           "distributed_role", "format_leaderboard", "interrupted_trials", "leaderboard_rows",
           "load_space", "load_tune_data", "main", "make_tuner", "parse_objective",
           "parse_space_arg", "plot_leaderboard", "searched_keys", "trial_worker", "tune",
           "write_leaderboard"]

if __name__ == "__main__":
    sys.exit(main())
