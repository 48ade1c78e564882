"""Activations the checkpoint formats need beyond Keras' built-ins.

Registered with Keras' serialization (package `keras_vit`), so a `.keras` file
using them loads once `keras_vit` is imported.
"""

import keras

MLP_ACTIVATIONS = ("gelu", "gelu_tanh")


@keras.saving.register_keras_serializable(package="keras_vit")
def gelu_tanh(x):
    """GELU with the tanh approximation, as Flax's `nn.gelu` (Google's ViT) computes it.

    `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`; Keras' `"gelu"` is the
    exact erf form, which differs by up to about 1e-3.

    Example:
    >>> gelu_tanh(keras.ops.convert_to_tensor([0.0, 1.0]))  # [0.0, 0.8412]
    """
    return keras.activations.gelu(x, approximate=True)


def mlp_activation(name):
    """The MLP activation for a name in `MLP_ACTIVATIONS`: `"gelu"` (exact) or `gelu_tanh`."""
    if name not in MLP_ACTIVATIONS:
        raise ValueError(f"`mlp_activation` must be one of {MLP_ACTIVATIONS}; "
                         f"received mlp_activation={name!r}")
    return "gelu" if name == "gelu" else gelu_tanh
