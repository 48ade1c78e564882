"""Random ViT weights written in each published format, and numpy forward passes per format.

The numpy forwards are written from each format's own conventions, not from
keras_vit: Flax (Google npz) kernels `(in, out)`, per-head `(D, H, Dh)`
attention kernels and a `(kh, kw, C, D)` patch conv, tanh GELU; PyTorch (timm)
`(out, in)` weights, a fused `(3D, D)` qkv projection, a `(D, C, kh, kw)`
patch conv, exact (erf) GELU.
"""

import json
import math

import numpy as np
from safetensors.numpy import save_file
from scipy.special import erf

# A tiny ViT: width 16, 2 heads of 8, MLP 32, 2 blocks, 4x4 patches on 12x12x3 images, 5 classes.
TINY = dict(width=16, heads=2, mlp=32, depth=2, patch=4, image=12, channels=3, classes=5)


# ------------------------------------------------------------------ weights and writers


def flax_weights(seed=0, cfg=TINY, class_token=True, pre_logits=None, head=True):
    """Google-npz-named random weights (Flax layouts), float32."""
    rng = np.random.default_rng(seed)
    d, h, m, p, c = cfg["width"], cfg["heads"], cfg["mlp"], cfg["patch"], cfg["channels"]
    grid = cfg["image"] // p
    draw = lambda *shape, s=0.3: rng.normal(0.0, s, shape).astype("float32")  # noqa: E731
    w = {"embedding/kernel": draw(p, p, c, d), "embedding/bias": draw(d),
         "Transformer/posembed_input/pos_embedding": draw(1, int(class_token) + grid * grid, d),
         "Transformer/encoder_norm/scale": 1 + draw(d), "Transformer/encoder_norm/bias": draw(d)}
    if class_token:
        w["cls"] = draw(1, 1, d)
    for i in range(cfg["depth"]):
        b = f"Transformer/encoderblock_{i}"
        att = f"{b}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            w[f"{att}/{name}/kernel"], w[f"{att}/{name}/bias"] = draw(d, h, d // h), draw(h, d // h)
        w[f"{att}/out/kernel"], w[f"{att}/out/bias"] = draw(h, d // h, d), draw(d)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{b}/{ln}/scale"], w[f"{b}/{ln}/bias"] = 1 + draw(d), draw(d)
        w[f"{b}/MlpBlock_3/Dense_0/kernel"], w[f"{b}/MlpBlock_3/Dense_0/bias"] = draw(d, m), draw(m)
        w[f"{b}/MlpBlock_3/Dense_1/kernel"], w[f"{b}/MlpBlock_3/Dense_1/bias"] = draw(m, d), draw(d)
    features = d
    if pre_logits:
        w["pre_logits/kernel"], w["pre_logits/bias"] = draw(d, pre_logits), draw(pre_logits)
        features = pre_logits
    if head:
        w["head/kernel"], w["head/bias"] = draw(features, cfg["classes"]), draw(cfg["classes"])
    return w


def _torch_linear(kernel):
    return np.ascontiguousarray(kernel.T)


def flax_to_timm(w, cfg=TINY):
    """The same weights under timm's names and PyTorch layouts."""
    d = cfg["width"]
    conv = np.ascontiguousarray(w["embedding/kernel"].transpose(3, 2, 0, 1))  # (D, C, kh, kw)
    t = {"patch_embed.proj.weight": conv,
         "patch_embed.proj.bias": w["embedding/bias"],
         "pos_embed": w["Transformer/posembed_input/pos_embedding"],
         "norm.weight": w["Transformer/encoder_norm/scale"],
         "norm.bias": w["Transformer/encoder_norm/bias"],
         "head.weight": _torch_linear(w["head/kernel"]), "head.bias": w["head/bias"]}
    if "cls" in w:
        t["cls_token"] = w["cls"]
    for i in range(cfg["depth"]):
        b = f"Transformer/encoderblock_{i}"
        att = f"{b}/MultiHeadDotProductAttention_1"
        q, k, v = (w[f"{att}/{n}/kernel"].reshape(d, d).T for n in ("query", "key", "value"))
        t[f"blocks.{i}.attn.qkv.weight"] = np.ascontiguousarray(np.concatenate([q, k, v]))
        t[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
            [w[f"{att}/{n}/bias"].reshape(d) for n in ("query", "key", "value")])
        t[f"blocks.{i}.attn.proj.weight"] = _torch_linear(w[f"{att}/out/kernel"].reshape(d, d))
        t[f"blocks.{i}.attn.proj.bias"] = w[f"{att}/out/bias"]
        for ours, ln in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            t[f"blocks.{i}.{ours}.weight"] = w[f"{b}/{ln}/scale"]
            t[f"blocks.{i}.{ours}.bias"] = w[f"{b}/{ln}/bias"]
        for ours, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            t[f"blocks.{i}.mlp.{ours}.weight"] = _torch_linear(w[f"{b}/MlpBlock_3/{dense}/kernel"])
            t[f"blocks.{i}.mlp.{ours}.bias"] = w[f"{b}/MlpBlock_3/{dense}/bias"]
    return t


def timm_to_hugging_face(t, cfg=TINY, prefix="vit."):
    """timm tensors under Hugging Face ViT names (separate q, k, v)."""
    d = cfg["width"]
    e = f"{prefix}embeddings"
    hf = {f"{e}.patch_embeddings.projection.weight": t["patch_embed.proj.weight"],
          f"{e}.patch_embeddings.projection.bias": t["patch_embed.proj.bias"],
          f"{e}.cls_token": t["cls_token"], f"{e}.position_embeddings": t["pos_embed"],
          f"{prefix}layernorm.weight": t["norm.weight"], f"{prefix}layernorm.bias": t["norm.bias"]}
    if prefix:
        hf["classifier.weight"], hf["classifier.bias"] = t["head.weight"], t["head.bias"]
    for i in range(cfg["depth"]):
        layer, blk = f"{prefix}encoder.layer.{i}", f"blocks.{i}"
        for j, n in enumerate(("query", "key", "value")):
            rows = slice(j * d, (j + 1) * d)
            hf[f"{layer}.attention.attention.{n}.weight"] = np.ascontiguousarray(
                t[f"{blk}.attn.qkv.weight"][rows])
            hf[f"{layer}.attention.attention.{n}.bias"] = t[f"{blk}.attn.qkv.bias"][rows].copy()
        hf[f"{layer}.attention.output.dense.weight"] = t[f"{blk}.attn.proj.weight"]
        hf[f"{layer}.attention.output.dense.bias"] = t[f"{blk}.attn.proj.bias"]
        hf[f"{layer}.layernorm_before.weight"] = t[f"{blk}.norm1.weight"]
        hf[f"{layer}.layernorm_before.bias"] = t[f"{blk}.norm1.bias"]
        hf[f"{layer}.layernorm_after.weight"] = t[f"{blk}.norm2.weight"]
        hf[f"{layer}.layernorm_after.bias"] = t[f"{blk}.norm2.bias"]
        hf[f"{layer}.intermediate.dense.weight"] = t[f"{blk}.mlp.fc1.weight"]
        hf[f"{layer}.intermediate.dense.bias"] = t[f"{blk}.mlp.fc1.bias"]
        hf[f"{layer}.output.dense.weight"] = t[f"{blk}.mlp.fc2.weight"]
        hf[f"{layer}.output.dense.bias"] = t[f"{blk}.mlp.fc2.bias"]
    return hf


def write_hugging_face_dir(directory, tensors, cfg=TINY, mean=(0.5, 0.5, 0.5),
                           std=(0.5, 0.5, 0.5), layer_norm_eps=1e-6, classifier=True):
    """A `transformers` ViT folder: config.json, preprocessor_config.json, model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "vit", "hidden_size": cfg["width"], "num_hidden_layers": cfg["depth"],
        "num_attention_heads": cfg["heads"], "intermediate_size": cfg["mlp"],
        "hidden_act": "gelu", "layer_norm_eps": layer_norm_eps, "image_size": cfg["image"],
        "patch_size": cfg["patch"], "num_channels": cfg["channels"], "qkv_bias": True,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "architectures": ["ViTForImageClassification" if classifier else "ViTModel"],
    }
    if classifier:
        config["id2label"] = {str(i): f"class_{i}" for i in range(cfg["classes"])}
        config["label2id"] = {f"class_{i}": i for i in range(cfg["classes"])}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(mean), "image_std": list(std), "do_normalize": True}))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def timm_weights(seed=0, cfg=TINY, distilled=False, avg_fc_norm=False, class_token=True,
                 no_embed_class=False):
    """Random timm state dicts for the variants Google npz cannot express."""
    rng = np.random.default_rng(seed)
    draw = lambda *shape, s=0.3: rng.normal(0.0, s, shape).astype("float32")  # noqa: E731
    t = flax_to_timm(flax_weights(seed, cfg, class_token=class_token), cfg)
    grid = (cfg["image"] // cfg["patch"]) ** 2
    prefix = int(class_token) + int(distilled)
    t["pos_embed"] = draw(1, grid + (0 if no_embed_class else prefix), cfg["width"])
    if distilled:
        t["dist_token"] = draw(1, 1, cfg["width"])
        t["head_dist.weight"] = draw(cfg["classes"], cfg["width"])
        t["head_dist.bias"] = draw(cfg["classes"])
    if avg_fc_norm:
        t["fc_norm.weight"], t["fc_norm.bias"] = t.pop("norm.weight"), t.pop("norm.bias")
    return t


# ------------------------------------------------------------------ numpy forward passes


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _patches(x, ph, pw):
    """`(B, H, W, C)` -> `(B, rows, cols, ph, pw, C)`."""
    b, hgt, wid, c = x.shape
    return x.reshape(b, hgt // ph, ph, wid // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)


def npz_forward(w, images, mean=0.5, std=0.5, eps=1e-6, positions=None):
    """Google's ViT (vit_jax/models_vit.py) in numpy, float64. Returns logits (or features)."""
    w = {k: v.astype("float64") for k, v in w.items()}
    x = (images.astype("float64") / 255.0 - np.asarray(mean)) / np.asarray(std)
    kernel = w["embedding/kernel"]
    tokens = np.einsum("brcpqk,pqkd->brcd", _patches(x, *kernel.shape[:2]), kernel)
    x = tokens.reshape(len(x), -1, kernel.shape[-1]) + w["embedding/bias"]
    if "cls" in w:
        x = np.concatenate([np.broadcast_to(w["cls"], (len(x), 1, x.shape[-1])), x], axis=1)
    x = x + (w["Transformer/posembed_input/pos_embedding"] if positions is None else positions)
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        b = f"Transformer/encoderblock_{i}"
        a = f"{b}/MultiHeadDotProductAttention_1"
        y = _layer_norm(x, w[f"{b}/LayerNorm_0/scale"], w[f"{b}/LayerNorm_0/bias"], eps)
        q, k, v = (np.einsum("btd,dhk->bthk", y, w[f"{a}/{n}/kernel"]) + w[f"{a}/{n}/bias"]
                   for n in ("query", "key", "value"))
        att = _softmax(np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1]))
        out = np.einsum("bhts,bshk->bthk", att, v)
        x = x + np.einsum("bthk,hkd->btd", out, w[f"{a}/out/kernel"]) + w[f"{a}/out/bias"]
        y = _layer_norm(x, w[f"{b}/LayerNorm_2/scale"], w[f"{b}/LayerNorm_2/bias"], eps)
        y = gelu_tanh(y @ w[f"{b}/MlpBlock_3/Dense_0/kernel"] + w[f"{b}/MlpBlock_3/Dense_0/bias"])
        x = x + y @ w[f"{b}/MlpBlock_3/Dense_1/kernel"] + w[f"{b}/MlpBlock_3/Dense_1/bias"]
        i += 1
    x = _layer_norm(x, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"], eps)
    x = x[:, 0] if "cls" in w else x.mean(axis=1)
    if "pre_logits/kernel" in w:
        x = np.tanh(x @ w["pre_logits/kernel"] + w["pre_logits/bias"])
    return x @ w["head/kernel"] + w["head/bias"] if "head/kernel" in w else x


def timm_forward(t, images, mean, std, heads, eps=1e-6, global_pool="token",
                 return_attention=False):
    """timm's VisionTransformer.forward (eval) in numpy, float64, from a state dict."""
    t = {k: v.astype("float64") for k, v in t.items()}
    x = (images.astype("float64") / 255.0 - np.asarray(mean)) / np.asarray(std)
    conv = t["patch_embed.proj.weight"]  # (D, C, kh, kw)
    x = np.einsum("brcpqk,dkpq->brcd", _patches(x, *conv.shape[2:]), conv)
    x = x.reshape(len(x), -1, conv.shape[0]) + t["patch_embed.proj.bias"]
    prefix = [t[k] for k in ("cls_token", "dist_token") if k in t]
    no_embed_class = t["pos_embed"].shape[1] == x.shape[1]  # prefix tokens get no position
    if no_embed_class:
        x = x + t["pos_embed"]
    x = np.concatenate([np.broadcast_to(p, (len(x), 1, x.shape[-1])) for p in prefix] + [x], 1)
    if not no_embed_class:
        x = x + t["pos_embed"]
    attentions, i = [], 0
    while f"blocks.{i}.norm1.weight" in t:
        b = f"blocks.{i}"
        y = _layer_norm(x, t[f"{b}.norm1.weight"], t[f"{b}.norm1.bias"], eps)
        qkv = y @ t[f"{b}.attn.qkv.weight"].T + t.get(f"{b}.attn.qkv.bias", 0.0)
        qkv = qkv.reshape(len(x), x.shape[1], 3, heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv  # each (B, H, T, Dh)
        att = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]))
        attentions.append(att)
        out = (att @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + out @ t[f"{b}.attn.proj.weight"].T + t[f"{b}.attn.proj.bias"]
        y = _layer_norm(x, t[f"{b}.norm2.weight"], t[f"{b}.norm2.bias"], eps)
        y = gelu_erf(y @ t[f"{b}.mlp.fc1.weight"].T + t[f"{b}.mlp.fc1.bias"])
        x = x + y @ t[f"{b}.mlp.fc2.weight"].T + t[f"{b}.mlp.fc2.bias"]
        i += 1
    if "norm.weight" in t:
        x = _layer_norm(x, t["norm.weight"], t["norm.bias"], eps)
    if global_pool == "avg":
        pooled = x[:, len(prefix):].mean(axis=1)
    else:
        pooled = x[:, 0]
    if "fc_norm.weight" in t:
        pooled = _layer_norm(pooled, t["fc_norm.weight"], t["fc_norm.bias"], eps)
    logits = pooled @ t["head.weight"].T + t["head.bias"]
    if "head_dist.weight" in t:  # DeiT inference: mean of both heads
        logits = (logits + x[:, 1] @ t["head_dist.weight"].T + t["head_dist.bias"]) / 2
    return (logits, attentions) if return_attention else logits


def random_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")
