"""`keras-vit train`: train a Vision Transformer and leave a complete run folder.

The job: data (`pipelines.data`) -> precision/XLA choice -> ViT from
`keras_vit.models.vision_transformer` -> the project's training recipe
(`keras_vit.recipe`: AdamW with warm-up + cosine decay, label smoothing,
gradient clipping) -> fit with best-checkpoint, BackupAndRestore (resume),
TensorBoard and CSV callbacks -> test metrics, SVC baseline, plots -> TF
Serving export. The parts live in `pipelines.training`; this entry module
keeps the public names in one place.

Example:
    keras-vit train                      # the embedded digits set, defaults
    keras-vit train --dataset cifar10 --data-dir ~/tfds --offline --epochs 30
    python -m pipelines.train --help
"""

import sys

from keras_vit.recipe import warmup_cosine_schedule
from pipelines.options import DEFAULT_DATASET
from pipelines.training.cli import build_parser, main
from pipelines.training.config import (
    GENERIC_PRESET,
    PRESETS,
    TrainConfig,
    check_config,
    hypermodel_of,
    model_kwargs,
    recipe_of,
    search_space_of,
)
from pipelines.training.evaluation import SVC_MAX_TRAIN
from pipelines.training.fit import compile_for_training, compiled_model
from pipelines.training.job import train
from pipelines.training.run_folder import BEST_WEIGHTS, epoch_timer

__all__ = ["BEST_WEIGHTS", "DEFAULT_DATASET", "GENERIC_PRESET", "PRESETS", "SVC_MAX_TRAIN",
           "TrainConfig", "build_parser", "check_config", "compile_for_training", "compiled_model",
           "epoch_timer",
           "hypermodel_of", "main", "model_kwargs", "recipe_of", "search_space_of", "train",
           "warmup_cosine_schedule"]

if __name__ == "__main__":
    sys.exit(main())
