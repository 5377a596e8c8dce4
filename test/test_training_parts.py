"""Training parts: losses, augmentation, sampler, recipes, the CLI, and the fail-fast checks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from rtseg_ros.datasets import DatasetError
from rtseg_ros.nets import WeightsError
from rtseg_ros.training.data import EpochSampler, SyntheticScenes
from rtseg_ros.training.losses import (
    AuxiliaryLoss,
    LabelRangeError,
    MultiScaleSupervisionLoss,
    OhemCrossEntropy,
    downsample_labels,
)
from rtseg_ros.training.recipe import RecipeError, builtin_recipes, load_recipe
from rtseg_ros.training.trainer import CheckpointError, Trainer
from rtseg_ros.training.transforms import (
    IMAGENET_MEAN,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    build_train_transform,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Losses


def test_ohem_keeps_only_hard_pixels_and_ignores_255():
    labels = torch.tensor([[[0, 1, 1, 255]]])
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 0] = 8.0   # pixel 0: confident and right (easy)
    logits[0, 1, 0, 1] = -8.0  # pixel 1: confident and wrong (hard)
    logits[0, 1, 0, 2] = 0.1   # pixel 2: unsure (p ~ 0.52, hard at threshold 0.7)
    logits[0, 0, 0, 3] = -50.0  # pixel 3: ignored whatever it predicts
    loss = OhemCrossEntropy(threshold=0.7, min_kept=1)(logits, labels)
    per_pixel = F.cross_entropy(logits, labels.clamp(max=1), reduction="none")[0, 0]
    assert loss.item() == pytest.approx(per_pixel[1:3].mean().item(), rel=1e-6)
    # With no more valid pixels than min_kept, every valid pixel counts: plain cross-entropy.
    plain = F.cross_entropy(logits, labels, ignore_index=255)
    assert OhemCrossEntropy(0.7, min_kept=3)(logits, labels).item() == pytest.approx(plain.item(), rel=1e-6)


def test_ohem_raises_threshold_to_keep_min_kept():
    labels = torch.zeros(1, 1, 5, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 5)
    logits[0, 0, 0] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # all easy (p > 0.7), confidence decreasing
    loss = OhemCrossEntropy(threshold=0.7, min_kept=2)(logits, labels)
    per_pixel = F.cross_entropy(logits, labels, reduction="none")[0, 0]
    assert loss.item() == pytest.approx(per_pixel[3:].mean().item(), rel=1e-6)  # the two least confident


def test_multi_scale_loss_is_main_plus_each_upsampled_scale():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 24))
    labels[:, :2] = 255
    outputs = {"out": torch.randn(2, 5, 16, 24), "scale1": torch.randn(2, 5, 4, 6), "scale3": torch.randn(2, 5, 4, 6)}
    loss, parts = MultiScaleSupervisionLoss(5, scale_weight=0.5)(outputs, labels)
    expected = F.cross_entropy(outputs["out"], labels, ignore_index=255)
    for key in ("scale1", "scale3"):
        up = F.interpolate(outputs[key], size=(16, 24), mode="bilinear", align_corners=True)
        expected = expected + 0.5 * F.cross_entropy(up, labels, ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"main", "scale1", "scale3"}


def test_auxiliary_loss_uses_selected_heads_on_nearest_downsampled_labels():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (1, 32, 64))
    outputs = {"out": torch.randn(1, 4, 32, 64)}
    outputs.update({f"aux{k}": torch.randn(1, 4, 32 // s, 64 // s) for k, s in zip(range(1, 6), (4, 8, 16, 32, 32))})
    loss, parts = AuxiliaryLoss(4, heads=(3, 5))(outputs, labels)
    expected = F.cross_entropy(outputs["out"], labels)
    for key, stride in (("aux3", 16), ("aux5", 32)):
        # Centre sampling: cell (i, j) takes the label at (i * s + s // 2, j * s + s // 2).
        small = labels[:, stride // 2::stride, stride // 2::stride]
        expected = expected + F.cross_entropy(outputs[key], small)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"main", "aux3", "aux5"}
    with pytest.raises(ValueError, match="auxiliary head"):
        AuxiliaryLoss(4, heads=(6,))


def test_downsample_labels_never_blends():
    labels = torch.tensor([[[0, 0, 7, 7], [0, 0, 7, 7], [255, 255, 3, 3], [255, 255, 3, 3]]])
    assert downsample_labels(labels, (2, 2)).tolist() == [[[0, 7], [255, 3]]]


def test_label_out_of_range_is_a_clear_error():
    labels = torch.full((1, 8, 8), 2)
    labels[0, 0, 0] = 30
    with pytest.raises(LabelRangeError, match=r"\[30\].*19 classes"):
        MultiScaleSupervisionLoss(19)({"out": torch.randn(1, 19, 8, 8), "scale1": torch.randn(1, 19, 2, 2)}, labels)


# --------------------------------------------------------------------------------------------------
# Augmentation and sampling


def _pair(height: int = 40, width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (height, width), dtype=np.uint8)
    return image, labels


def test_crop_pads_image_with_mean_and_labels_with_ignore():
    image, labels = _pair(20, 30)
    out_image, out_labels = RandomCrop(64, 64)(image, labels, np.random.default_rng(1))
    assert out_image.shape == (64, 64, 3) and out_labels.shape == (64, 64)
    assert np.count_nonzero(out_labels != 255) == 20 * 30
    mean = np.round(255 * np.asarray(IMAGENET_MEAN)).astype(np.uint8)
    assert (out_image[out_labels == 255] == mean).all()


def test_flip_and_scale_move_image_and_labels_together():
    image, labels = _pair()
    image[..., 0] = labels * 40  # the red channel encodes the label
    for transform in (RandomHorizontalFlip(p=1.0), RandomScale(1.5, 1.5), RandomScale(0.5, 0.5)):
        out_image, out_labels = transform(image, labels, np.random.default_rng(0))
        assert out_image.shape[:2] == out_labels.shape
        assert set(np.unique(out_labels)) <= set(np.unique(labels))  # nearest: no new values
        if isinstance(transform, RandomHorizontalFlip):
            assert (out_image[..., 0] == out_labels * 40).all()


def test_jitter_changes_only_the_image():
    image, labels = _pair()
    out_image, out_labels = PhotometricJitter(0.3, 0.3, 0.3)(image, labels, np.random.default_rng(0))
    assert out_labels is labels and out_image.dtype == np.uint8 and not np.array_equal(out_image, image)


def test_augmentation_depends_only_on_seed_epoch_and_index():
    transform = build_train_transform({"scale": [0.5, 2.0], "rotate": 10, "flip": True, "crop": [32, 64],
                                       "jitter": {"brightness": 0.2}})
    data = SyntheticScenes(4, 64, 128, transform=transform, seed=3)
    first = data[2]
    data.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, data[2]))
    data.set_epoch(1)
    assert not torch.equal(first[1], data[2][1])
    assert first[0].shape == (3, 32, 64) and first[1].dtype == torch.int64


def test_epoch_sampler_is_seeded_resumable_and_sharded():
    full = list(EpochSampler(10, seed=1, epoch=2))
    assert sorted(full) == list(range(10)) and full == list(EpochSampler(10, seed=1, epoch=2))
    assert full != list(EpochSampler(10, seed=1, epoch=3))
    assert list(EpochSampler(10, seed=1, epoch=2, start=4)) == full[4:]
    ranks = [list(EpochSampler(10, seed=1, epoch=2, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and set(sum(ranks, [])) == set(range(10))


# --------------------------------------------------------------------------------------------------
# Recipes and the CLI


def test_builtin_recipes_load_and_carry_the_paper_settings():
    assert {"mfaranet_cityscapes", "atonet_cityscapes", "atonet_camvid", "synthetic"} <= set(builtin_recipes())
    mfaranet = load_recipe("mfaranet_cityscapes")
    assert (mfaranet["optim"]["lr"], mfaranet["optim"]["momentum"], mfaranet["optim"]["weight_decay"]) == (0.005, 0.9, 0.0005)
    assert (mfaranet["optim"]["power"], mfaranet["augment"]["crop"], mfaranet["train"]["batch_size"],
            mfaranet["train"]["epochs"]) == (0.9, [1024, 1024], 14, 200)
    atonet = load_recipe("atonet_camvid")
    assert atonet["model"]["label_set"] == "camvid" and atonet["loss"]["aux_heads"] == [3, 4, 5]


def test_overrides_are_parsed_and_typos_rejected():
    recipe = load_recipe("synthetic", ["optim.lr=0.5", "augment.crop=[64, 128]", "init.weights=null"])
    assert recipe["optim"]["lr"] == 0.5 and recipe["augment"]["crop"] == [64, 128]
    with pytest.raises(RecipeError, match="unknown recipe key 'optim.lrr'"):
        load_recipe("synthetic", ["optim.lrr=0.5"])
    with pytest.raises(RecipeError, match="multiples of 16"):
        load_recipe("synthetic", ["augment.crop=[60, 128]"])
    with pytest.raises(RecipeError, match="no recipe"):
        load_recipe("no_such_recipe")


def test_cli_lists_shows_and_reports_errors(tmp_path):
    from rtseg_ros.cli import main

    runner = CliRunner()
    listed = runner.invoke(main, ["train", "--list"])
    assert listed.exit_code == 0 and "synthetic" in listed.output.split()
    shown = runner.invoke(main, ["train", "synthetic", "--show", "--set", "optim.lr=0.25"])
    assert shown.exit_code == 0 and "lr: 0.25" in shown.output
    bad = runner.invoke(main, ["train", "synthetic", "--set", "optim.lrr=1"])
    assert bad.exit_code == 1 and "unknown recipe key 'optim.lrr'" in bad.output
    empty = runner.invoke(main, ["train", "atonet_camvid", "--set", f"data.root={tmp_path}"])
    assert empty.exit_code == 1 and "DatasetError" in empty.output


# --------------------------------------------------------------------------------------------------
# Fail fast: errors before the first iteration


def _tiny_recipe(tmp_path, *extra: str) -> dict:
    return load_recipe("synthetic", [
        "data.synthetic.train_count=4", "data.synthetic.val_count=1", "data.synthetic.height=32",
        "data.synthetic.width=64", "augment.crop=[32, 64]", "augment.scale=null", "data.workers=0",
        "train.batch_size=2", "train.iterations=2", f"output.dir={tmp_path / 'run'}", "output.weights=null",
        "output.progress=false", "output.tensorboard=false", *extra])


def test_empty_data_folder_stops_before_training(tmp_path):
    (tmp_path / "data" / "train" / "images").mkdir(parents=True)
    recipe = _tiny_recipe(tmp_path, "data.dataset=folder", f"data.root={tmp_path / 'data'}")
    with pytest.raises(DatasetError):
        Trainer(recipe)
    assert not (tmp_path / "run").exists()


def test_label_value_out_of_range_stops_before_training(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "images").mkdir(parents=True)
        (tmp_path / "data" / split / "masks").mkdir(parents=True)
        for i in range(2):
            mask = np.full((32, 64), 1, np.uint8)
            mask[5, 5] = 40 if split == "train" and i == 1 else 1  # 40 is no Cityscapes train id
            cv2.imwrite(str(tmp_path / "data" / split / "images" / f"f{i}.png"), np.zeros((32, 64, 3), np.uint8))
            cv2.imwrite(str(tmp_path / "data" / split / "masks" / f"f{i}.png"), mask)
    recipe = _tiny_recipe(tmp_path, "data.dataset=folder", f"data.root={tmp_path / 'data'}")
    with pytest.raises(LabelRangeError, match=r"f1\.png holds label value\(s\) \[40\]"):
        Trainer(recipe)
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoints_stop_before_training(tmp_path):
    from rtseg_ros.nets import build_model, save_weights

    good = save_weights(build_model("atonet", 19), tmp_path / "w.pth", model_name="atonet", label_set="cityscapes")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer(_tiny_recipe(tmp_path), resume=truncated)
    with pytest.raises(WeightsError, match="truncated"):
        Trainer(_tiny_recipe(tmp_path, f"init.weights={truncated}"))
    # A weights-only file is no resume checkpoint: say so rather than restart from iteration 0.
    with pytest.raises(CheckpointError, match="not a resume checkpoint"):
        Trainer(_tiny_recipe(tmp_path), resume=good)
    assert not (tmp_path / "run").exists()


def test_fine_tuning_to_another_class_count_reinitialises_and_names_the_heads(tmp_path, caplog):
    from rtseg_ros.nets import build_model, save_weights

    torch.manual_seed(1)
    source = build_model("atonet", 19, training_heads=True)
    path = save_weights(source, tmp_path / "cityscapes.pth", model_name="atonet", label_set="cityscapes")
    # Cityscapes weights -> the 11 CamVid classes (the synthetic scenes regrouped into CamVid ids).
    with caplog.at_level("INFO", logger="rtseg_ros.training.trainer"):
        trainer = Trainer(_tiny_recipe(tmp_path, "model.label_set=camvid", f"init.weights={path}"))
    assert trainer.num_classes == 11
    message = next(r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage())
    assert "19 classes" in message and "to 11 classes" in message and "classifier" in message
    state, original = trainer.model.state_dict(), source.state_dict()
    assert torch.equal(state["encoder.conv1.weight"], original["encoder.conv1.weight"])
    reinitialised = [k for k in state if state[k].shape != original[k].shape]
    assert reinitialised and all(k in message for k in reinitialised)
