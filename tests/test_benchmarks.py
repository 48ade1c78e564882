"""The benchmark machinery, without timing anything: CLI, FLOP formula, profile categories.

Speed itself is never asserted here (see benchmarks/README.md); these check
that the benchmarks parse their options and count and classify correctly.
"""

import os

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
    """Forward FLOPs per image counted from the built model's own weights and graph.

    Every kernel is applied once per token it sees: a 4-D (convolution) kernel
    once per patch, the head's once per image, a block's key and value kernels
    once per token entering the block, its other kernels once per token the
    block outputs (fewer in a token-pooled model's last block); each of its
    entries is one multiply-add (2 FLOPs). Attention adds, per block, two
    (queries x T x inner) matmuls: scores and weights x values.
    """
    from keras_vit.layers import TransformerEncoderBlock

    patches = model.get_layer("patch_embedding").output.shape[1]
    seen = {block.name: (block.output.shape[1], block.input.shape[1])
            for block in model.layers if isinstance(block, TransformerEncoderBlock)}
    total = 0
    for weight in model.weights:
        if not weight.path.endswith("kernel"):
            continue
        size = int(np.prod(weight.shape))
        if len(weight.shape) == 4:
            total += 2 * size * patches
            continue
        if weight.path.startswith("head/"):
            total += 2 * size
            continue
        queries, tokens = seen[weight.path.split("/")[0]]
        is_key_or_value = weight.path.endswith(("key/kernel", "value/kernel"))
        total += 2 * size * (tokens if is_key_or_value else queries)
        if weight.path.endswith("attention_output/kernel"):
            inner = int(np.prod(weight.shape[:-1]))  # heads x key_dim
            total += 2 * 2 * queries * tokens * inner
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
    assert flops.vit_forward_flops(height, width, channels, patch, last_block_tokens=1,
                                   **kwargs) == expected
    assert flops.vit_training_flops(height, width, channels, patch, last_block_tokens=1,
                                    **kwargs) == 3 * expected
    everything = vision_transformer(pooling="gap", class_token=True, **config)
    assert flops.vit_forward_flops(height, width, channels, patch,
                                   **kwargs) == kernel_count_flops(everything)


def test_flop_formula_rejects_a_patch_that_does_not_divide():
    with pytest.raises(ValueError, match="patch_size 16 must divide the image size 30x32"):
        flops.vit_forward_flops(30, 32, 3, 16, 192, 12, 768, 1000)
    for bad in (0, 198):
        with pytest.raises(ValueError, match=f"last_block_tokens={bad}: expected 1..197"):
            flops.vit_forward_flops(224, 224, 3, 16, 192, 12, 768, 1000, last_block_tokens=bad)


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


# ------------------------------------------------------- folder benchmark
def test_digit_folder_is_a_split_layout_of_the_digits_splits(tmp_path):
    from sklearn.datasets import load_digits

    from benchmarks.digit_folder import write_digit_folder
    from pipelines.data.digits import split_indices
    from pipelines.data.folder import folder_splits

    draws = {"train": 2, "validation": 1, "test": 1}
    written = write_digit_folder(tmp_path / "a", draws=draws, limit=2)
    assert written == {"train": 40, "validation": 20, "test": 20}
    splits = folder_splits(str(tmp_path / "a"), None, 0.2, 0, "error")
    assert splits.info.image_shape == (28, 28, 1)
    assert splits.info.split_origins == {"train": "train/", "validation": "validation/",
                                         "test": "test/"}
    # Each split holds drawings of its own source digits: the first 2 of each class.
    targets = load_digits().target
    for role, indices in split_indices().items():
        names = sorted(os.path.basename(p) for p in (tmp_path / "a" / role).rglob("*.png"))
        expected = [i for label in range(10) for i in [j for j in indices
                                                       if targets[j] == label][:2]]
        assert names == sorted(f"{i:04d}_{d}.png" for i in expected for d in range(draws[role]))
        labels = sorted(int(label) for _, label in getattr(splits, role))
        assert labels == sorted(int(targets[i]) for i in expected for _ in range(draws[role]))


def test_digit_folder_is_deterministic_and_colour_is_rgb(tmp_path):
    from PIL import Image

    from benchmarks.digit_folder import write_digit_folder

    small = dict(draws={"train": 1, "validation": 1, "test": 1}, limit=1)
    write_digit_folder(tmp_path / "a", **small)
    write_digit_folder(tmp_path / "b", **small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 30
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
               for f in files)
    write_digit_folder(tmp_path / "c", colour=True, **small)
    image = Image.open(next((tmp_path / "c").rglob("*.png")))
    assert image.mode == "RGB" and image.size == (32, 32)
    # Drawings differ: a warped, noisy copy, not the same template twice.
    pixels = [np.asarray(Image.open(p), float) for p in sorted((tmp_path / "a").rglob("*.png"))]
    assert min(np.abs(a - b).mean() for a, b in zip(pixels, pixels[1:])) > 1.0


@pytest.mark.parametrize("kwargs, needle", [
    (dict(draws={"train": 0, "validation": 1, "test": 1}), "draws"),
    (dict(draws={"train": 1}), "draws")])
def test_digit_folder_rejects_bad_draws(tmp_path, kwargs, needle):
    from benchmarks.digit_folder import write_digit_folder

    with pytest.raises(ValueError, match=needle):
        write_digit_folder(tmp_path / "a", **kwargs)
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_digit_folder_refuses_an_existing_split_folder(tmp_path):
    from benchmarks.digit_folder import write_digit_folder

    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="already holds a train/"):
        write_digit_folder(tmp_path, limit=1)


def test_folder_benchmark_judges_its_two_targets():
    from benchmarks.bench_folder import judge

    assert judge({"test_accuracy": 0.951, "svc_test_accuracy": 0.936}, 599.0) == (True, True)
    assert judge({"test_accuracy": 0.950, "svc_test_accuracy": 0.936}, 601.0) == (False, False)
    assert judge({"test_accuracy": 0.99}, 10.0) == (False, True)  # no baseline: not shown


def test_job_benchmark_steady_step_skips_the_first_epoch():
    from benchmarks.bench_job import steady_step_seconds

    probe = {"epochs": [{"epoch": 0, "train_step_seconds": [9.0, 0.5, 0.5]},
                        {"epoch": 1, "train_step_seconds": [0.04, 0.03, 0.05]},
                        {"epoch": 2, "train_step_seconds": [0.02, 0.06, 0.03]}]}
    assert steady_step_seconds(probe) == pytest.approx(np.median([0.04, 0.03, 0.05,
                                                                  0.02, 0.06, 0.03]))
    assert steady_step_seconds({"epochs": probe["epochs"][:1]}) is None


def test_job_benchmark_checks_autos_precision_against_the_faster_one():
    from benchmarks.bench_job import precision_check

    records = [dict(precision="float32", xla=True, steady_step_seconds=0.030),
               dict(precision="mixed_bfloat16", xla=True, steady_step_seconds=0.040),
               dict(precision="float32", xla=False, steady_step_seconds=0.048),
               dict(precision="mixed_bfloat16", xla=False, steady_step_seconds=0.042)]
    under_xla, graphs = precision_check(records, {True: "float32", False: "float32"})
    assert (under_xla["xla"], under_xla["fastest"], under_xla["auto_over_fastest"]) == \
        (True, "float32", 1.0)
    assert (graphs["xla"], graphs["auto"], graphs["fastest"]) == (False, "float32",
                                                                  "mixed_bfloat16")
    assert graphs["auto_over_fastest"] == pytest.approx(0.048 / 0.042)
    # One precision per setting (a CPU without bf16): nothing to compare.
    assert precision_check(records[:1], {True: "float32"}) == []


@pytest.mark.slow
def test_folder_benchmark_quick_mode_runs_the_job_on_the_written_folder(tmp_path, monkeypatch):
    import json

    from benchmarks import bench_folder

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert bench_folder.run(quick=True, xla=False) == (True, False)
    record = json.loads((tmp_path / "folder.json").read_text())
    assert record["folder_sizes"] == {"train": 100, "validation": 100, "test": 100}
    assert record["options"]["variant"] == "Ti/7" and record["options"]["epochs"] == 2
    assert record["options"]["augmentation"] == "affine" and record["options"]["tta_shift"] == 2
    metrics = record["metrics"]
    assert metrics["split_origins"]["test"] == "test/" and "svc_test_accuracy" in metrics


def test_memory_worker_peak_is_the_workers_own_not_its_parents():
    """Linux carries `ru_maxrss` across execve; the worker's `VmHWM` starts afresh.

    The parent (this test process) touches 400 MiB first; a worker that only
    imports `benchmarks.memory_worker` must report far less than that.
    """
    import subprocess
    import sys

    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM is Linux's; elsewhere the worker falls back to ru_maxrss")
    held = np.ones(400 * 2**20, np.uint8)  # touched: resident in this process
    code = "from benchmarks.memory_worker import _peak_mib; print(_peak_mib())"
    child = subprocess.run([sys.executable, "-c", code], cwd=common.REPO_ROOT,
                           capture_output=True, text=True, check=True)
    child_peak = float(child.stdout.strip())
    assert held.sum() == held.size
    assert 1 < child_peak < 200, child_peak


def test_decoding_verdict_takes_each_sides_fastest_compiler():
    from benchmarks.bench_decoding import LOOP_PEER, _best_verdict, _verdict

    def result(ours_s, peer_s):
        return common.Comparison(ours_s=ours_s, peer_s=peer_s, ratio=peer_s / ours_s, pairs=9)

    lengths = (5, 10)
    # Graphs: 2x then 3x. XLA: ours 1 ms and 1.5 ms, the peer 4 ms and 9 ms.
    ratios = {("graph", 1, LOOP_PEER, 5): result(3e-3, 6e-3),
              ("graph", 1, LOOP_PEER, 10): result(4e-3, 12e-3),
              ("xla", 1, LOOP_PEER, 5): result(1e-3, 4e-3),
              ("xla", 1, LOOP_PEER, 10): result(1.5e-3, 9e-3)}
    assert not _verdict(ratios, lengths, 1, LOOP_PEER)[0]  # 2x at 5 < 3x
    passed, text = _best_verdict(ratios, lengths, 1, LOOP_PEER, ("graph", "xla"))
    # Best of each side: peer 4 ms / ours 1 ms at 5, 9 / 1.5 at 10: 4x then 6x.
    assert passed and text == "batch 1: PASS 4.0x at 5, 6.0x at 10"
    # The peer's best graph time beating its XLA time is taken too: 2.5 ms / 1 ms.
    ratios[("graph", 1, LOOP_PEER, 5)] = result(3e-3, 2.5e-3)
    passed, text = _best_verdict(ratios, lengths, 1, LOOP_PEER, ("graph", "xla"))
    assert not passed and text == "batch 1: MISS 2.5x at 5, 6.0x at 10"
    # Graph rows only: the graph ratios.
    assert _best_verdict(ratios, lengths, 1, LOOP_PEER, ("graph",))[1] == \
        "batch 1: MISS 0.8x at 5, 3.0x at 10"


def test_decoding_configurations_decode_the_same_tokens():
    """Graph and single-threaded-executor configurations: both sides, loop and whole decode."""
    import numpy as np
    import tensorflow as tf

    from benchmarks.bench_decoding import IMAGE_SHAPE, build_model, decoders, unused_token
    from keras_vit.models.decoder_steps import decoder_steps

    model = build_model()
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2,) + IMAGE_SHAPE),
                         tf.float32)
    end_id = unused_token(model, images, 3)
    memory = decoder_steps(model).encode(images)[0]
    outputs = []
    for configuration in ("graph", "single"):
        whole, loops = decoders(model, 3, end_id, configuration)
        outputs += [f(images).numpy() for f in whole] + [f(memory).numpy() for f in loops]
    assert outputs[0].shape == (2, 3)
    for tokens in outputs[1:]:
        np.testing.assert_array_equal(tokens, outputs[0])
    with pytest.raises(ValueError, match="configuration must be one of"):
        decoders(model, 3, end_id, "eager")


def test_decoding_loops_agree_and_are_timed_in_this_process():
    from benchmarks.decoding_onednn import measure, table_rows

    # measure() itself asserts that the cached and recomputing loops emit the same tokens.
    result = measure([2, 3], min_rounds=2, min_time=0.0)
    assert sorted(result) == ["2", "3"]
    for row in result.values():
        assert row["cached_ms"] > 0 and row["recompute_ms"] > 0
    rows = table_rows({"1": result})
    assert [row[:2] for row in rows] == [["on", "2"], ["on", "3"]]
    assert float(rows[0][4]) == pytest.approx(
        result["2"]["recompute_ms"] / result["2"]["cached_ms"], abs=0.006)


@pytest.mark.slow
def test_decoding_onednn_worker_runs_with_the_setting_it_was_given():
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", KERAS_BACKEND="tensorflow")
    worker = common.run_worker("benchmarks.decoding_onednn", [2], env=env, timeout=600)
    assert worker["onednn"] in (False, None)  # None: this TensorFlow does not say
    assert worker["loops"]["2"]["cached_ms"] > 0


@pytest.mark.slow
def test_serving_benchmark_times_both_exports_in_a_tensorflow_only_worker(tmp_path, monkeypatch):
    import json

    from benchmarks import bench_serving

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(common, "precisions_for_this_cpu", lambda: ["float32"])
    bench_serving.run(quick=True, repeats=3)
    record = json.loads((tmp_path / "serving.json").read_text())
    (result,) = record["results"]
    # The worker served both SavedModels without either model's library.
    imported = result["modules_imported_in_worker"]
    assert not imported["keras_vit"] and not imported["keras_hub"] and not imported["pipelines"]
    assert result["output_dtypes"]["ours"] == {"probabilities": "float32",
                                               "top_k_scores": "float32",
                                               "top_k_classes": "int32"}
    for task in ("throughput", "latency"):
        walls = {side: result["timings"][task][side]["wall"] for side in ("ours", "keras_hub")}
        assert len(walls["ours"]) == len(walls["keras_hub"]) >= 3
    summary = result["summary"]
    assert summary["ours"]["images_per_s"] == pytest.approx(
        8 / np.median(result["timings"]["throughput"]["ours"]["wall"]))
    assert summary["throughput_ratio"]["ratio"] > 0 and summary["latency_ratio"]["ratio"] > 0
