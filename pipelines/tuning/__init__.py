"""The `keras-vit tune` job, one module per job.

* `config`: `TuneConfig` and its checks;
* `space_input`: `--space`, `--space-file` and `--objective` parsing, the
  resumed search's space check;
* `tuners`: the keras-tuner factory, worker records, distributed roles;
* `leaderboard`: rows, text table, CSV/JSON/PNG;
* `job`: `tune(config)`, the phases in order;
* `cli`: the command line (`build_parser`, `main`).

`pipelines.tune` is the entry module (`python -m pipelines.tune`); the
hypermodel itself is `keras_vit.tuning.ViTHyperModel`.
"""
