"""Images to patch tokens, and the class token."""

import keras
from keras import ops

from keras_vit.layers.validation import check_pair, check_positive_int, check_rank


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEmbedding(keras.layers.Layer):
    """Splits images into non-overlapping patches and projects each to `hidden_dim`.

    A convolution with kernel = stride = patch size, reshaped to row-major
    tokens: `(B, H, W, C) -> (B, (H / ph) * (W / pw), hidden_dim)`.

    Args:
        patch_size: int or (int, int). Patch height and width; must divide the
            image height and width.
        hidden_dim: int > 0. Token width.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> PatchEmbedding(patch_size=16, hidden_dim=192)(np.zeros((1, 224, 224, 3))).shape
    (1, 196, 192)

    References:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020.
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = check_pair("patch_size", patch_size)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.projection = keras.layers.Conv2D(self.hidden_dim, self.patch_size,
                                              strides=self.patch_size, padding="valid",
                                              data_format="channels_last",
                                              name="projection", dtype=self.dtype_policy)

    def grid_size(self, image_shape):
        """`(rows, cols)` of patches for an image shape `(H, W, C)` or `(B, H, W, C)`."""
        height, width = image_shape[-3], image_shape[-2]
        if height is None or width is None:
            raise ValueError(f"PatchEmbedding needs a static image size; received {image_shape}")
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(f"patch_size={self.patch_size} does not divide the image size "
                             f"{(height, width)}")
        return height // self.patch_size[0], width // self.patch_size[1]

    def build(self, input_shape):
        check_rank("images", input_shape, 4, "(batch, height, width, channels)")
        self.grid = self.grid_size(input_shape)
        self.image_shape = tuple(input_shape[1:])
        self.projection.build(input_shape)

    def _check_image_shape(self, shape):
        """Images of another (static) size than the layer was built for would be misread."""
        check_rank("images", shape, 4, "(batch, height, width, channels)")
        if any(got is not None and got != built
               for got, built in zip(tuple(shape[1:]), self.image_shape)):
            raise ValueError("`images` must have (height, width, channels) = "
                             f"{self.image_shape}, the size this PatchEmbedding was built for; "
                             f"received shape {tuple(shape)}")

    def call(self, images):
        """`self.projection(images)` as tokens, computed as one matmul of the patches' pixels.

        The `Conv2D` holds the weights (Keras' names and shapes; its `kernel`
        includes a LoRA update when enabled); the arithmetic multiplies the
        `(B * T, ph * pw * C)` patch pixels by that `(ph, pw, C, d)` kernel read
        as `(ph * pw * C, d)`: the same values. Why: on TensorFlow the
        convolution's kernel gradient (`Conv2DBackpropFilter`) took 11.6 ms of a
        bfloat16 ViT-Ti/16 training step at batch 32 (2-core Zen 5) for 1.9
        GFLOP a matmul does in about 2 ms; the step ran 2.6 % faster as a
        bfloat16 graph, float32 and inference unchanged (benchmarks/README.md,
        `vit`).
        """
        self._check_image_shape(images.shape)
        (patch_h, patch_w), (rows, cols) = self.patch_size, self.grid
        channels = images.shape[-1]
        pixels = patch_h * patch_w * channels
        images = ops.cast(images, self.compute_dtype)
        patches = ops.reshape(images, (-1, rows, patch_h, cols, patch_w, channels))
        patches = ops.reshape(ops.transpose(patches, (0, 1, 3, 2, 4, 5)), (-1, pixels))
        kernel = ops.cast(ops.reshape(self.projection.kernel, (pixels, self.hidden_dim)),
                          self.compute_dtype)
        tokens = ops.matmul(patches, kernel)
        if self.projection.use_bias:
            tokens = tokens + ops.cast(self.projection.bias, self.compute_dtype)
        return ops.reshape(tokens, (-1, rows * cols, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        if self.built:
            self._check_image_shape(input_shape)
        rows, cols = self.grid_size(input_shape)
        return (input_shape[0], rows * cols, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "hidden_dim": self.hidden_dim})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token: `(B, T, d) -> (B, T + 1, d)`.

    Args:
        initializer: initializer of the token. Defaults to zeros, as in ViT.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> ClassToken()(np.zeros((2, 196, 192), "float32")).shape  # (2, 197, 192)
    """

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        check_rank("tokens", input_shape, 3)
        self.token = self.add_weight(name="token", shape=(1, 1, input_shape[-1]),
                                     initializer=self.initializer)

    def call(self, tokens):
        check_rank("tokens", tokens.shape, 3)
        batch = ops.shape(tokens)[0]
        token = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (batch, 1, tokens.shape[-1]))
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        check_rank("tokens", input_shape, 3)
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"initializer": keras.initializers.serialize(self.initializer)})
        return config
