"""Hyperparameter search over Vision Transformers with keras-tuner.

`ViTHyperModel` turns `keras_vit.models.vision_transformer` into a
`keras_tuner.HyperModel` with a default search space (patch size, depth, width,
heads, MLP ratio, pooling, dropout, drop path, learning rate, weight decay,
label smoothing and batch size) that a plain dict narrows or widens. It works
with every keras-tuner tuner (RandomSearch, Hyperband, BayesianOptimization,
GridSearch) and inside user-written ones, and stays backend-agnostic: the
models, loss and metric use `keras.ops` only. Trials compile with the
project's one training recipe (`keras_vit.recipe`), as `keras-vit train` does.

Search-space values (`search_space={key: spec}`):

* a scalar, e.g. `"dropout": 0.0`: fixed, not searched;
* a list, e.g. `"depth": [2, 4]` (or `{"values": [...], "default": v}`): a choice;
* `{"min": 1e-4, "max": 3e-3, "sampling": "log"}` (optional `"step"`,
  `"default"`): a range; `patch_size`, `hidden_dim` and `num_heads` take ranges
  only with a linear `"step"` (they are expanded into a list);
* `None`: the default of `DEFAULT_SEARCH_SPACE`.

Width and heads are searched as one choice over the valid pairs, hyperparameter
`width_heads` with values like `"64x4"` (`hidden_dim` x `num_heads`), so no trial
ever gets a head count that does not divide its width, and grid search,
Bayesian optimisation and random search all see one plain categorical value.

Modules: `keras_vit.tuning.space` (the search space and its checks) and
`keras_vit.tuning.hypermodel` (`ViTHyperModel`).

Example:
>>> import keras_tuner as kt
>>> from keras_vit.tuning import ViTHyperModel
>>> hypermodel = ViTHyperModel((8, 8, 1), 10, {"depth": [1, 2], "hidden_dim": [32, 64]},
...                            epochs=5, num_train_examples=1149)
>>> tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=4)
>>> tuner.search(train_examples, validation_data=validation_examples, epochs=5)
>>> best = tuner.get_best_models()[0]
"""


from keras_vit.recipe import LabelAccuracy, SmoothedCrossentropy
from keras_vit.tuning.hypermodel import ViTHyperModel
from keras_vit.tuning.space import (
    DEFAULT_PATCH_COUNT_RANGE,
    DEFAULT_SEARCH_SPACE,
    OPTIONAL_SEARCH_KEYS,
    SAMPLINGS,
    WIDTH_HEADS,
    default_patch_sizes,
    resolve_search_space,
    split_width_heads,
    width_head_pairs,
)

__all__ = ["DEFAULT_PATCH_COUNT_RANGE", "DEFAULT_SEARCH_SPACE", "LabelAccuracy",
           "OPTIONAL_SEARCH_KEYS", "SAMPLINGS", "SmoothedCrossentropy", "ViTHyperModel",
           "WIDTH_HEADS", "default_patch_sizes", "resolve_search_space", "split_width_heads",
           "width_head_pairs"]
