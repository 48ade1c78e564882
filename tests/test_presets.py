"""The data-scaled training preset (`pipelines.training.presets`): its rules, pure and fast,
and how the training job resolves and records it."""

import dataclasses
import json
import math

import pytest

from benchmarks.flops import vit_training_flops
from pipelines.data import DatasetInfo
from pipelines.training import presets
from pipelines.training.config import PRESETS, RUN_DEFINING_OPTIONS, TrainConfig, check_config
from pipelines.training.presets import (
    batch_size_for,
    choose_patch_size,
    epochs_for,
    planned_epoch_seconds,
    scaled_preset,
    training_flops,
)
from pipelines.training.run_folder import RUN_CONFIG, plan_run_dir


def _info(shape, num_train, num_validation=0, name="scans"):
    return DatasetInfo(name, shape, 10, [str(i) for i in range(10)], num_train,
                       num_validation, 100)


# ------------------------------------------------------------------ patch grid
def _brute_force_patch(height, width):
    """The rule, spelled out: largest p <= 16 dividing both sides with >= 16 patches, else 1."""
    best = 1
    for p in range(1, 17):
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) >= 16:
            best = p
    return best


@pytest.mark.parametrize("height, width, expected", [
    (8, 8, 2), (28, 28, 7), (32, 32, 8), (64, 64, 16), (96, 96, 16), (224, 224, 16),
    (30, 45, 5), (37, 37, 1), (4, 4, 1), (28, 32, 4)])
def test_patch_size_cuts_at_least_a_4x4_grid(height, width, expected):
    assert choose_patch_size(height, width) == expected


def test_patch_size_rule_over_many_shapes():
    for height in range(3, 70):
        for width in (height, height + 4, 2 * height):
            p = choose_patch_size(height, width)
            assert p == _brute_force_patch(height, width), (height, width)
            assert height % p == 0 and width % p == 0


# -------------------------------------------------------- model and schedule
def test_few_thousand_small_grey_images_get_the_digits_sized_model():
    preset = scaled_preset((28, 28, 1), 4596, 576)
    assert preset["variant"] == "Ti/7"
    assert (preset["hidden_dim"], preset["depth"], preset["num_heads"], preset["mlp_dim"]) == (
        64, 4, 4, 128)
    assert preset["pooling"] == "gap" and preset["augmentation"] == "affine"
    assert preset["tta_shift"] == 2  # round(7 / 4): re-cuts the 7-pixel patches
    assert preset["learning_rate"] == pytest.approx(3e-3) and preset["batch_size"] == 128
    assert presets.MIN_EPOCHS < preset["epochs"] < presets.MAX_EPOCHS


def test_width_and_depth_grow_with_the_data():
    sizes = [scaled_preset((32, 32, 3), n) for n in (2_000, 20_000, 200_000)]
    assert [(p["hidden_dim"], p["depth"]) for p in sizes] == [(64, 4), (128, 6), (192, 8)]
    assert [p["num_heads"] for p in sizes] == [4, 4, 3]
    assert all(p["mlp_dim"] == 2 * p["hidden_dim"] for p in sizes)
    # Peak learning rate falls with the width: 3e-3 at 64, 1e-3 at 192.
    assert [p["learning_rate"] for p in sizes] == pytest.approx([3e-3, 1.5e-3, 1e-3])


def test_large_images_keep_the_data_default_augmentation_and_no_tta():
    preset = scaled_preset((224, 224, 3), 100_000)
    assert preset["augmentation"] is None and preset["tta_shift"] == 0
    assert preset["variant"] == "Ti/16"


def test_training_flops_match_the_benchmarks_analytic_count():
    for shape, p, d, depth, m in [((28, 28, 1), 7, 64, 4, 128), ((32, 32, 3), 4, 96, 6, 192),
                                  ((224, 224, 3), 16, 192, 12, 768)]:
        expected = vit_training_flops(*shape, p, d, depth, m, 10, class_token=False)
        assert training_flops(shape, p, d, depth, m) == expected


@pytest.mark.parametrize("shape, num_train, num_validation", [
    ((28, 28, 1), 4596, 576), ((28, 28, 1), 8000, 2000), ((32, 32, 3), 3000, 600),
    ((8, 8, 1), 1149, 288), ((64, 64, 3), 20_000, 5_000), ((224, 224, 3), 100_000, 10_000)])
def test_epochs_fill_the_fit_budget(shape, num_train, num_validation):
    preset = scaled_preset(shape, num_train, num_validation)
    architecture = dict(patch_size=int(preset["variant"].split("/")[1]),
                        hidden_dim=preset["hidden_dim"], depth=preset["depth"],
                        mlp_dim=preset["mlp_dim"])
    epoch = planned_epoch_seconds(shape, num_train, num_validation, architecture)
    # Independent arithmetic of the plan: images x FLOPs / rate + overhead per epoch.
    flops = vit_training_flops(*shape, architecture["patch_size"], architecture["hidden_dim"],
                               architecture["depth"], architecture["mlp_dim"], 10,
                               class_token=False)
    assert epoch == pytest.approx((num_train + num_validation / 3) * flops
                                  / presets.PLANNING_FLOP_RATE
                                  + presets.EPOCH_OVERHEAD_SECONDS)
    epochs = preset["epochs"]
    expected = min(presets.MAX_EPOCHS, max(presets.MIN_EPOCHS,
                                           math.floor(presets.FIT_BUDGET_SECONDS / epoch)))
    assert epochs == expected
    if presets.MIN_EPOCHS < epochs < presets.MAX_EPOCHS:
        assert epochs * epoch <= presets.FIT_BUDGET_SECONDS < (epochs + 1) * epoch


def test_more_images_never_mean_more_epochs():
    architecture = dict(patch_size=7, hidden_dim=64, depth=4, mlp_dim=128)
    epochs = [epochs_for((28, 28, 1), n, n // 5, architecture)
              for n in (500, 1000, 4000, 8000, 16_000, 64_000)]
    assert epochs == sorted(epochs, reverse=True)
    assert epochs[0] == presets.MAX_EPOCHS and epochs[-1] == presets.MIN_EPOCHS


@pytest.mark.parametrize("num_train, expected", [
    (100_000, 128), (2048, 128), (2047, 64), (600, 32), (300, 16), (10, 16)])
def test_batch_size_keeps_16_steps_per_epoch(num_train, expected):
    assert batch_size_for(num_train) == expected


@pytest.mark.parametrize("shape, num_train, needle", [
    ((28, 28), 100, "image_shape"), ((28, 0, 1), 100, "image_shape"),
    ((28, 28, 1), 0, "num_train"), ((28, 28, 1), 2.5, "num_train")])
def test_bad_data_sizes_are_named(shape, num_train, needle):
    with pytest.raises(ValueError, match=needle):
        scaled_preset(shape, num_train)


# ------------------------------------------------------------- given options
def test_given_options_win_and_the_derived_ones_follow_them():
    info = _info((28, 28, 1), 4596, 576)
    config = TrainConfig(dataset="/data/scans", hidden_dim=96, epochs=3,
                         augmentation="crop").resolved(info)
    assert (config.hidden_dim, config.epochs, config.augmentation) == (96, 3, "crop")
    assert (config.num_heads, config.mlp_dim) == (4, 192)  # follow the given width
    assert config.learning_rate == pytest.approx(3e-3 * 64 / 96)
    check_config(config)


def test_a_given_variant_keeps_its_own_architecture_and_plans_its_epochs():
    from keras_vit.models.vit import VIT_VARIANTS

    info = _info((32, 32, 3), 4000, 500)
    config = TrainConfig(dataset="/data/pets", variant="S/4").resolved(info)
    assert config.variant == "S/4"
    assert config.hidden_dim is None and config.depth is None and config.num_heads is None
    s = VIT_VARIANTS["S"]
    assert config.epochs == epochs_for((32, 32, 3), 4000, 500, dict(
        patch_size=4, hidden_dim=s["hidden_dim"], depth=s["depth"], mlp_dim=s["mlp_dim"]))
    # A given patch size is planned with too.
    patched = TrainConfig(dataset="/data/pets", patch_size=4).resolved(info)
    assert patched.patch_size == 4 and patched.variant == "Ti/4"


def test_a_named_preset_ignores_the_data_and_no_data_gives_the_placeholder():
    info = _info((8, 8, 1), 50_000)
    digits = TrainConfig(dataset="digits").resolved(info)
    assert {k: getattr(digits, k) for k in PRESETS["digits"]} == PRESETS["digits"]
    assert not TrainConfig(dataset="digits").preset_needs_data
    placeholder = TrainConfig(dataset="mnist").resolved()
    assert TrainConfig(dataset="mnist").preset_needs_data
    assert placeholder.variant == "Ti/4"  # divides 28 and 32 alike
    check_config(placeholder)


def test_the_chosen_model_builds_for_its_data():
    from keras_vit.models import vision_transformer
    from pipelines.training.config import model_kwargs

    for shape in [(28, 28, 1), (32, 32, 3), (30, 45, 3)]:
        info = _info(shape, 3000, 600)
        model = vision_transformer(**model_kwargs(
            TrainConfig(dataset="/data/x").resolved(info), info))
        assert model.output_shape == (None, 10)


# ------------------------------------------------------------------ resume
def _interrupted_run(tmp_path, config):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / RUN_CONFIG).write_text(json.dumps(dataclasses.asdict(config)))
    return run_dir


def test_scaled_options_are_run_defining_and_checked_on_resume(tmp_path):
    assert {"epochs", "variant", "hidden_dim", "augmentation"} <= set(RUN_DEFINING_OPTIONS)
    requested = TrainConfig(dataset="/data/scans", output_dir=str(tmp_path / "run"))
    started = requested.resolved(_info((28, 28, 1), 4596, 576))
    _interrupted_run(tmp_path, started)
    # Same data: the same options, the run resumes.
    assert plan_run_dir(requested.resolved(_info((28, 28, 1), 4596, 576))) == "resume"
    # Four times the images: other epochs, refused naming the option.
    grown = requested.resolved(_info((28, 28, 1), 4 * 4596, 576))
    with pytest.raises(ValueError, match=rf"--epochs \d+ \(run: {started.epochs}\)"):
        plan_run_dir(grown)


# ------------------------------------------------------------- the job itself
@pytest.mark.slow
def test_job_scales_records_and_reports_the_preset_of_a_folder(tmp_path):
    from pipelines.training.job import train
    from tests.image_folder_fixtures import write_class_folders

    write_class_folders(tmp_path / "scans", per_class=30, size=(16, 16), channels=1)
    run_dir = tmp_path / "run"
    config = TrainConfig(dataset=str(tmp_path / "scans"), epochs=1, export=False, xla=False,
                         precision="float32", verbose=0, output_dir=str(run_dir))
    lines = []
    metrics = train(config, log=lines.append)
    # 16x16 grey, 54 training images (18 per class after carving validation and test).
    expected = scaled_preset((16, 16, 1), 54, 18, given={"epochs": 1})
    assert expected["variant"] == "Ti/4" and expected["batch_size"] == 16
    saved = json.loads((run_dir / RUN_CONFIG).read_text())
    for name, value in expected.items():
        assert saved[name] == metrics["config"][name] == (1 if name == "epochs" else value)
    assert metrics["tta_shift"] == expected["tta_shift"] == 1
    assert any(line.startswith("options scaled to 16x16x1 images, 54 training images")
               for line in lines)
    # The run folder is planned after the data is read, and still guarded.
    with pytest.raises(ValueError, match="holds a finished run"):
        train(config, log=lines.append)
