"""keras-vit: Vision Transformers for Keras 3, from attention pooling to serving.

Importing the package registers every layer, and the training recipe's loss and
metric, with Keras' serialization, so a `.keras` file using them loads (compiled)
with plain `keras.models.load_model`.

Example:
>>> import keras, keras_vit
>>> model = keras.models.load_model("runs/digits/best.keras")
"""

from keras_vit import (
    layers,  # noqa: F401  (registers the serializable layers)
    models,  # noqa: F401  (registers gelu_tanh, used by imported checkpoints)
    recipe,  # noqa: F401  (registers SmoothedCrossentropy, LabelAccuracy)
)

__version__ = "0.1.0"
