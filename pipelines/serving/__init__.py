"""TF Serving side of keras-vit: export, verification, model repository and clients.

Modules, one job each (none imports TensorFlow at import time, so the command
lines answer `--help` and argument errors instantly):

* `contract`: signature, input, output and file names, tolerances (defined once);
* `errors`: the exceptions;
* `model_info`: image shape, classes, compute dtype of a model; argument checks;
* `model_file`: loading a `.keras` file, with clear errors for corrupt files;
* `samples`: sample/warm-up pixel images and their PNG files;
* `signatures`: the serving graph (`build_serving_fns`, `write_saved_model`) and
  the export metadata;
* `warmup`: the `tf_serving_warmup_requests` file;
* `op_audit`: ops a stock model server lacks;
* `repository`: versions, publish, prune, models.config, version policies;
* `saved_model_cli`, `verification`: `verify_export` in fresh processes;
* `transaction`: `export_model`, all or nothing;
* `image_files`, `rest_client`, `grpc_client`, `local_client`, `backends`,
  `results`: the `keras-vit predict` client.

The command lines are `pipelines/export.py` and `pipelines/predict.py`; the
stand-alone fresh-process checker is `pipelines/serving_checks.py`.

Example:
    >>> from pipelines.serving.transaction import export_model
    >>> export_model(model, "vit", "savedmodels", class_names=["cat", "dog"])
"""
