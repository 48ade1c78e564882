"""Activations: Keras' exact GELU in its erf form with a written-out gradient, computed faster."""

import math

import keras
from keras import ops

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="keras_vit")
@ops.custom_gradient
def gelu(x):
    """`x * Phi(x)` (exact GELU) as `x * 0.5 * (1 + erf(x / sqrt(2)))`, gradient by formula.

    The same function as `keras.activations.gelu(x, approximate=False)`
    (float32 values within 1e-6), computed the way CPUs run fastest. On
    TensorFlow Keras' form goes through `erfc`, whose bfloat16 kernel is
    scalar code (5.5-6.3 ms per ViT-Ti/16 layer at batch 32, 2-core Zen 5), while
    `erf` is vectorised; automatic differentiation of either form keeps more
    intermediates and adds elementwise passes over the `(tokens, mlp_dim)`
    hidden layer, so the gradient `Phi(x) + x * phi(x)` is written out. oneDNN
    still fuses this forward form with the preceding matmul and bias in an
    inference graph. At ViT-Ti/16 a training step ran 7.5 % faster as a
    bfloat16 graph, 4.6 % as a float32 graph, 3 % under XLA
    (benchmarks/README.md, `vit`).

    Args:
        x: float tensor, any shape.

    Returns:
        `gelu(x)` in `x`'s dtype.

    Example:
    >>> gelu(keras.ops.convert_to_tensor([-1.0, 0.0, 1.0]))  # [-0.1587, 0.0, 0.8413]
    """
    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        with keras.name_scope("gelu"):  # names the ops for profiles (benchmarks/step_profile.py)
            pdf = ops.exp(-0.5 * ops.square(x)) * ops.cast(_INV_SQRT_2PI, x.dtype)
            return upstream * (cdf + x * pdf)

    with keras.name_scope("gelu"):
        cdf = 0.5 * (1.0 + ops.erf(x * ops.cast(_INV_SQRT2, x.dtype)))
        return x * cdf, grad


def faster_equivalent(activation):
    """This module's `gelu` for Keras' exact `"gelu"` (the same function), else `activation`.

    Example:
    >>> faster_equivalent(keras.activations.get("gelu")) is gelu  # True
    """
    return gelu if activation is keras.activations.gelu else activation
