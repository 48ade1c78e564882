"""The benchmark machinery, without timing anything: CLI, FLOP formula, profile categories.

Speed itself is never asserted here (see benchmarks/README.md); these check
that the benchmarks parse their options and count and classify correctly.
"""

import numpy as np
import pytest

from benchmarks import common, flops, step_profile
from benchmarks.__main__ import BENCHMARKS, parse_arguments


def test_cli_parses_names_and_options():
    args, names = parse_arguments(["gemm", "vit", "gemm", "--quick", "--repeats", "4",
                                   "--xla", "off", "--tolerance", "0.1", "--strict"])
    assert names == ["gemm", "vit"]  # in the given order, once each
    assert args.quick and args.strict and args.repeats == 4 and args.xla == "off"
    assert args.tolerance == 0.1


def test_cli_defaults_to_every_benchmark():
    args, names = parse_arguments([])
    assert names == list(BENCHMARKS)
    assert {"attention", "vit", "gemm", "serving", "input", "memory", "job"} <= set(names)
    assert not args.quick and args.xla == "auto" and args.repeats is None


@pytest.mark.parametrize("argv", [["nope"], ["vit", "--repeats", "0"], ["--xla", "maybe"]])
def test_cli_rejects_bad_input(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == 2
    assert argv[-1] in capsys.readouterr().err


def test_every_benchmark_module_has_run():
    import importlib

    for name, module_name in BENCHMARKS.items():
        assert callable(importlib.import_module(module_name).run), name


def kernel_count_flops(model):
    """Forward FLOPs per image counted from the built model's own weights.

    Every kernel is applied once per token it sees: a 4-D (convolution) kernel
    once per patch, the head's once per image, every other one once per token;
    each of its entries is one multiply-add (2 FLOPs). Attention adds, per
    block, two (T x T x inner) matmuls: scores and weights x values.
    """
    tokens = model.get_layer("position_embedding").output.shape[1]
    patches = model.get_layer("patch_embedding").output.shape[1]
    total = 0
    for weight in model.weights:
        if not weight.path.endswith("kernel"):
            continue
        size = int(np.prod(weight.shape))
        if len(weight.shape) == 4:
            total += 2 * size * patches
        elif weight.path.startswith("head/"):
            total += 2 * size
        else:
            total += 2 * size * tokens
        if weight.path.endswith("attention_output/kernel"):
            inner = int(np.prod(weight.shape[:-1]))  # heads x key_dim
            total += 2 * 2 * tokens * tokens * inner
    return total


@pytest.mark.parametrize("config", [
    dict(variant="Ti/16", image_shape=(224, 224, 3), num_classes=1000),
    dict(variant="Ti/8", image_shape=(32, 48, 1), num_classes=7, hidden_dim=16, depth=3,
         num_heads=2, mlp_dim=40),
])
def test_flop_formula_matches_a_count_over_the_models_kernels(config):
    from keras_vit.models import vision_transformer

    model = vision_transformer(**config)
    patch = int(config["variant"].split("/")[1])
    height, width, channels = config["image_shape"]
    kwargs = dict(hidden_dim=config.get("hidden_dim", 192), depth=config.get("depth", 12),
                  mlp_dim=config.get("mlp_dim", 768), num_classes=config["num_classes"])
    expected = kernel_count_flops(model)
    assert flops.vit_forward_flops(height, width, channels, patch, **kwargs) == expected
    assert flops.vit_training_flops(height, width, channels, patch, **kwargs) == 3 * expected


def test_flop_formula_rejects_a_patch_that_does_not_divide():
    with pytest.raises(ValueError, match="patch_size 16 must divide the image size 30x32"):
        flops.vit_forward_flops(30, 32, 3, 16, 192, 12, 768, 1000)


@pytest.mark.parametrize("name, op_type, category", [
    # Names as TensorFlow's profiler reports them for our ViT's train step.
    (("StatefulPartitionedCall/gradient_tape/vit_ti16_1/encoder_block_0_1/mlp_1/dense1_1/"
      "Tensordot/MatMul/MatMul_1"), "_MklMatMul", "matmuls"),
    (("StatefulPartitionedCall/gradient_tape/vit_ti16_1/patch_embedding_1/projection_1/"
      "convolution/Conv2DBackpropFilter"), "_MklNativeConv2DBackpropFilterWithBias", "matmuls"),
    ("StatefulPartitionedCall/vit_ti16_1/encoder_block_0_1/attention_1/Softmax", "_MklSoftmax",
     "attention softmax"),
    ("StatefulPartitionedCall/gradient_tape/vit_ti16_1/encoder_block_0_1/attention_1/sub", "Sub",
     "attention softmax"),
    ("StatefulPartitionedCall/vit_ti16_1/encoder_block_0_1/attention_1/value_1/Add", "AddV2",
     "other"),
    (("StatefulPartitionedCall/sparse_categorical_crossentropy/"
      "SparseSoftmaxCrossEntropyWithLogits/SparseSoftmaxCrossEntropyWithLogits"),
     "SparseSoftmaxCrossEntropyWithLogits", "other"),
    (("StatefulPartitionedCall/vit_ti16_1/encoder_block_0_1/norm1_1/ArithmeticOptimizer/"
      "AddOpsRewrite_add_2"), "AddV2", "LayerNorm"),
    ("StatefulPartitionedCall/gradient_tape/vit_ti16_1/encoder_norm_1/mul/Mul_1", "Mul",
     "LayerNorm"),
    ("StatefulPartitionedCall/vit_ti16_1/encoder_block_0_1/mlp_1/dense1_1/Gelu/Erfc", "Erfc",
     "GELU"),
    ("StatefulPartitionedCall/adam_w/mul_33", "Mul", "optimizer"),
    ("StatefulPartitionedCall/adam_w/AssignAddVariableOp_44", "AssignAddVariableOp", "optimizer"),
    ("StatefulPartitionedCall/vit_ti16_1/class_token_1/concat", "ConcatV2", "casts/transposes"),
    ("StatefulPartitionedCall/vit_ti16_1/normalisation_1/mul", "Mul", "other"),
    ("IteratorGetNext", "IteratorGetNext", "input"),
])
def test_profile_categories(name, op_type, category):
    assert step_profile.categorize(name, op_type) == category


def test_profile_summary_shares_add_up():
    ops = {("a/MatMul", "MatMul"): 3.0, ("a/attention/Softmax", "Softmax"): 1.0,
           ("adam_w/mul", "Mul"): 2.0, ("x/add", "AddV2"): 2.0}
    table = step_profile.summarize(ops, [2.0, 2.0])
    assert table["steps"] == 2 and table["wall_seconds_per_step"] == 2.0
    assert table["op_seconds_per_step"] == 4.0 and table["parallelism"] == 2.0
    shares = {name: c["share"] for name, c in table["categories"].items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["matmuls"] == pytest.approx(3 / 8) and shares["optimizer"] == pytest.approx(0.25)


def test_interleave_rotates_the_order_and_runs_every_round():
    calls_made = []
    calls = {name: (lambda n=name: calls_made.append(n)) for name in ("a", "b", "c")}
    timings = common.interleave(calls, min_rounds=3, min_time=0.0, warmup=1)
    assert calls_made[:3] == ["a", "b", "c"]  # warm-up
    assert calls_made[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t["wall"]) == len(t["cpu"]) == 3 for t in timings.values())


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(0).uniform(size=101))
    for q in (0, 50, 99, 100):
        assert common.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_cpu_facts_reads_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n")
    facts = common.cpu_facts(str(cpuinfo))
    assert facts == {"model": "Test CPU", "flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
                     "native_bf16": True}
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2 fma\n")
    assert common.precisions_for_this_cpu(common.cpu_facts(str(cpuinfo))) == ("float32",)
