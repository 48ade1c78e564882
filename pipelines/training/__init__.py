"""The `keras-vit train` job, one module per job.

* `config`: `TrainConfig`, dataset presets, checks, the run's recipe;
* `run_folder`: what a run folder keeps across a resume, and its callbacks;
* `fit`: the ViT built and compiled by the recipe, then trained;
* `evaluation`: test metrics, SVC baseline, plots, export, summary;
* `job`: `train(config)`, the phases in order;
* `cli`: the command line (`build_parser`, `main`).

`pipelines.train` is the entry module (`python -m pipelines.train`).
"""
