"""Analytic FLOP count of a ViT (multiply-adds x 2), by matmul, per image.

Per image, with N = (H / p) * (W / p) patches, T = N + 1 tokens (class token),
width D, MLP width M, depth L, C channels and K classes, one multiply-add
counted as 2 FLOPs:

    patch embedding   2 * N * (p * p * C) * D
    per block:
      qkv projection  2 * T * D * 3D
      scores  Q K^T   2 * T * T * D          (all heads together: H * T * T * D/H)
      weights x V     2 * T * T * D
      out projection  2 * T * D * D
      MLP             2 * T * D * M * 2      (two Dense layers)
    head              2 * D * K

With class-token pooling the last block computes the class token's row only
(`last_block_tokens=1`): keys and values of all T tokens, the query,
attention, out projection and MLP of one.

    forward  = patch + L * block + head
    training = 3 * forward

The factor 3 is the usual convention: the backward pass does two matmuls per
forward matmul (gradient w.r.t. the input and w.r.t. the weights). It slightly
over-counts (the patch embedding needs no input gradient) and leaves out
softmax, LayerNorm, GELU, biases and the optimizer, all elementwise and small
beside the matmuls. ViT-Ti/16 at 224x224: 2.51 GFLOP forward, 7.52 GFLOP per
training image; 7.00 with the class-token-only last block of `vision_transformer`.

Example:
    >>> round(vit_training_flops(224, 224, 3, 16, 192, 12, 768, 1000) / 1e9, 2)
    7.52
"""


def vit_forward_flops_by_part(height, width, channels, patch_size, hidden_dim, depth,
                              mlp_dim, num_classes, class_token=True, last_block_tokens=None):
    """Forward FLOPs per image of each matmul kind, summed over the blocks.

    Args:
        height, width, channels: the input image shape.
        patch_size: square patch side p (must divide height and width).
        hidden_dim, depth, mlp_dim: width D, blocks L, MLP width M.
        num_classes: K, the head's outputs.
        class_token: whether a class token adds one token (T = N + 1).
        last_block_tokens: int or None. Tokens whose outputs the last block
            computes (`vision_transformer` with class-token pooling: 1, the
            class token; it still projects keys and values of all T tokens).
            `None`: all T.

    Returns:
        dict part -> FLOPs: patch_embedding, qkv, scores, attention_values,
        out_projection, mlp, head.

    Example:
        >>> vit_forward_flops_by_part(224, 224, 3, 16, 192, 12, 768, 1000)["head"]
        384000
    """
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the image size "
                         f"{height}x{width}")
    patches = (height // patch_size) * (width // patch_size)
    tokens = patches + (1 if class_token else 0)
    if last_block_tokens is not None and not 1 <= last_block_tokens <= tokens:
        raise ValueError(f"last_block_tokens={last_block_tokens!r}: expected 1..{tokens} (the "
                         "tokens of the last block)")
    d = hidden_dim

    def block(queries):  # one block whose `queries` tokens attend to all `tokens`
        return {
            "qkv": 2 * d * d * (queries + 2 * tokens),
            "scores": 2 * queries * tokens * d,
            "attention_values": 2 * queries * tokens * d,
            "out_projection": 2 * queries * d * d,
            "mlp": 2 * queries * d * mlp_dim * 2,
        }

    full, last = block(tokens), block(tokens if last_block_tokens is None else last_block_tokens)
    parts = {"patch_embedding": 2 * patches * patch_size * patch_size * channels * d}
    parts.update({part: (depth - 1) * full[part] + last[part] for part in full})
    parts["head"] = 2 * d * num_classes
    return parts


def vit_forward_flops(*args, **kwargs):
    """Total forward FLOPs per image; same arguments as `vit_forward_flops_by_part`."""
    return sum(vit_forward_flops_by_part(*args, **kwargs).values())


def vit_training_flops(*args, **kwargs):
    """FLOPs per image of one training step (3 x forward); arguments as above."""
    return 3 * vit_forward_flops(*args, **kwargs)


def square_matmul_flops(size):
    """FLOPs of one (size x size) @ (size x size) matmul: 2 * size**3."""
    return 2 * size ** 3
