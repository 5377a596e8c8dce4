"""Training parts: losses, augmentation, sampler, recipes, the CLI, the loop's pieces, and the fail-fast checks."""
from __future__ import annotations

import logging

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
from rtseg_ros.training.checkpoints import CheckpointError
from rtseg_ros.training.trainer import Trainer
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
# The loop's pieces: schedule, optimizer, train_one_epoch / evaluate, the run log, checkpoints, DDP helpers


class _PixelModel(torch.nn.Module):
    """A 1x1 convolution with the model contract the loop uses (``forward`` with ``output_size``, ``forward_train``)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.encoder = torch.nn.Conv2d(3, 4, 1)
        self.classifier = torch.nn.Conv2d(4, num_classes, 1)

    def forward(self, x, output_size=None):
        logits = self.classifier(self.encoder(x))
        return F.interpolate(logits, size=tuple(output_size or x.shape[-2:]), mode="nearest")

    def forward_train(self, x):
        return {"out": self.forward(x)}


def _cross_entropy(outputs, labels):
    loss = F.cross_entropy(outputs["out"], labels, ignore_index=255)
    return loss, {"main": float(loss.detach())}


def _optimisation(model, lr=0.1):
    from rtseg_ros.training.optim import build_optimizer, build_scheduler

    optim = {"optimizer": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False,
             "backbone_lr_mult": 0.1, "decoder_lr_mult": 1.0, "backbone_wd_mult": 1.0, "schedule": "poly",
             "power": 1.0, "min_lr": 0.0}
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, total=10, iterations_per_epoch=5, epochs=2)
    return optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


def test_schedule_factors_poly_per_iteration_and_cosine_per_epoch():
    from rtseg_ros.training.optim import ScheduleFactor

    poly = ScheduleFactor("poly", total=10, iterations_per_epoch=5, epochs=2, power=2.0, floor=0.0)
    assert poly(0) == 1.0 and poly(5) == pytest.approx(0.25) and poly(10) == 0.0 and poly(12) == 0.0
    cosine = ScheduleFactor("cosine", total=20, iterations_per_epoch=5, epochs=4, power=0.9, floor=0.1)
    assert cosine(0) == cosine(4) == 1.0  # constant within an epoch
    assert cosine(10) == pytest.approx(0.1 + 0.9 * 0.5) and cosine(20) == pytest.approx(0.1)
    assert ScheduleFactor("constant", 10, 5, 2, 0.9, 0.0)(7) == 1.0


def test_optimizer_groups_are_encoder_then_the_rest():
    model = _PixelModel()
    optimizer, scheduler, _ = _optimisation(model, lr=0.1)
    encoder, decoder = optimizer.param_groups
    assert [p is q for p, q in zip(encoder["params"], model.encoder.parameters())] == [True, True]
    assert encoder["lr"] == pytest.approx(0.01) and decoder["lr"] == pytest.approx(0.1)
    # The schedule is saved with the scheduler: what a resume file holds.
    assert scheduler.state_dict()["lr_lambdas"][0]["kind"] == "poly"


def test_train_one_epoch_steps_until_end_and_reports_each_step():
    from rtseg_ros.training.loop import TrainingForward, train_one_epoch

    torch.manual_seed(0)
    model = _PixelModel()
    optimizer, scheduler, scaler = _optimisation(model)
    batches = [(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))) for _ in range(5)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    done = train_one_epoch(TrainingForward(model, _cross_entropy), batches, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, device=torch.device("cpu"), amp=False, iteration=2, end=4,
                           after_step=lambda it, loss, parts: seen.append((it, loss, set(parts))))
    assert done == 4 and [s[0] for s in seen] == [3, 4] and all(s[2] == {"main"} for s in seen)
    assert all(np.isfinite(s[1]) for s in seen)
    assert scheduler.last_epoch == 2 and not torch.equal(before["classifier.weight"], model.classifier.weight)
    # Nothing left to do: no step at all.
    assert train_one_epoch(TrainingForward(model, _cross_entropy), batches, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, device=torch.device("cpu"), amp=False, iteration=4, end=4) == 4
    assert scheduler.last_epoch == 2


def test_train_step_refuses_a_non_finite_loss_before_updating():
    from rtseg_ros.training.loop import TrainingForward, train_step

    model = _PixelModel()
    optimizer, scheduler, scaler = _optimisation(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.full((1, 3, 4, 4), float("nan"))
    with pytest.raises(FloatingPointError, match="iteration 7"):
        train_step(TrainingForward(model, _cross_entropy), images, torch.zeros(1, 4, 4, dtype=torch.long),
                   optimizer=optimizer, scheduler=scheduler, scaler=scaler, device=torch.device("cpu"), amp=False,
                   iteration=7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_evaluate_scores_at_label_size_and_restores_the_mode():
    from rtseg_ros.metrics import ConfusionMatrix
    from rtseg_ros.training.loop import evaluate

    torch.manual_seed(0)
    model = _PixelModel().train()
    images = torch.randn(3, 3, 4, 6)
    labels = torch.randint(0, 3, (3, 8, 12))  # twice the image size: the model's resize takes the logits there
    labels[0, 0, :4] = 255
    labels[1, 1, :2] = 9  # neither a class nor ignored
    loader = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    matrix, unknown = evaluate(model, loader, 3, device=torch.device("cpu"))
    assert model.training and unknown == 2
    expected = ConfusionMatrix(3)
    with torch.no_grad():
        predictions = model.eval()(images, output_size=(8, 12)).argmax(1).numpy()
    for prediction, truth in zip(predictions, labels.numpy()):
        expected.update(prediction, truth)
    assert np.array_equal(matrix.matrix, expected.matrix) and matrix.matrix.sum() == 3 * 8 * 12 - 4 - 2


def test_run_log_rows_and_append_on_resume(tmp_path):
    import csv

    from rtseg_ros.training.metrics_log import CSV_COLUMNS, CSV_FILE, RunLog

    settings = dict(total=6, iterations_per_epoch=4, log_every=2, tensorboard=False, progress=False)
    with RunLog(tmp_path / "run", enabled=True, iteration=0, **settings) as log:
        for iteration, loss in enumerate((1.0, 3.0, 5.0), start=1):
            log.train_step(iteration, loss, {"main": loss}, lr=0.01, miou=float("nan"))
        log.validation(3, 0.5, 0.75, best=True)
    with RunLog(tmp_path / "run", enabled=True, iteration=3, **settings) as log:  # a resumed session
        log.train_step(4, 7.0, {"main": 7.0}, lr=0.005, miou=0.5)
    with open(tmp_path / "run" / CSV_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["kind"], r["iteration"], r["epoch"], r["loss"], r["miou"]) for r in rows] == [
        ("train", "2", "0.500", "2.00000", ""),  # the mean of the two steps since the last row
        ("val", "3", "0.750", "", "0.500000"),
        ("train", "4", "1.000", "7.00000", ""),  # appended, one header
    ]
    assert rows[0]["lr"] == "0.01" and all(float(r["seconds"]) >= 0 for r in rows)
    # On any other rank nothing is written.
    with RunLog(tmp_path / "other", enabled=False, iteration=0, **settings) as log:
        log.train_step(2, 1.0, {}, lr=0.01, miou=0.0)
        log.validation(2, 0.5, 0.5, best=True)
    assert not (tmp_path / "other").exists()


def test_progress_keeps_the_best_validation():
    from rtseg_ros.training.checkpoints import Progress

    progress = Progress()
    assert not progress.validated_here
    progress.iteration = 2
    assert not progress.record_validation(0.5, float("nan"), 0.0)  # nan is never best
    assert progress.validated_here
    progress.iteration = 4
    assert progress.record_validation(1.0, 0.4, 0.9) and progress.best_miou == 0.4
    progress.iteration = 6
    assert not progress.record_validation(1.5, 0.3, 0.8)
    assert (progress.best_miou, progress.last_miou) == (0.4, 0.3)
    assert [h["iteration"] for h in progress.history] == [2, 4, 6]


def test_rng_state_round_trips_every_generator():
    import random

    from rtseg_ros.training.checkpoints import restore_rng_state, rng_state

    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_resume_from_another_recipe_names_what_differs():
    from rtseg_ros.training.checkpoints import check_resume_compatible

    recipe = load_recipe("synthetic")
    saved = load_recipe("synthetic", ["optim.lr=0.5", "train.seed=3"])
    state = {"training": {"recipe": saved, "world_size": 1}}
    with pytest.raises(CheckpointError, match=r"different optim, train\.seed; .*init\.weights=last\.pth"):
        check_resume_compatible(state, recipe, 1, "last.pth")
    same = {"training": {"recipe": load_recipe("synthetic", ["output.log_every=1"]), "world_size": 2}}
    with pytest.raises(CheckpointError, match=r"2 process\(es\).*now 1"):
        check_resume_compatible(same, recipe, 1, "last.pth")
    check_resume_compatible({"training": {**same["training"], "world_size": 1}}, recipe, 1, "last.pth")


def test_single_process_distributed_helpers_are_no_ops(monkeypatch):
    from rtseg_ros.training.distributed import (
        DistributedContext,
        all_reduce_sum,
        data_parallel,
        device_kind,
        gather_objects,
        init_distributed,
        select_device,
    )

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext() and context.is_main and not context.distributed
    module = torch.nn.Linear(2, 2)
    assert data_parallel(module, torch.device("cpu"), context, sync_bn=True) is module
    values = np.arange(4)
    assert all_reduce_sum(values, torch.device("cpu"), context) is values
    assert gather_objects({"a": 1}, context) == [{"a": 1}]
    assert device_kind("cpu") == "cpu" and device_kind("cuda:1") == "cuda"
    assert select_device("cpu", context) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="CUDA is not available"):
            select_device("cuda", context)


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
    # The handler goes on the trainer's logger itself: with launch_testing's pytest plugin loaded, the
    # loggers created after it (a launch LaunchLogger class) do not propagate to caplog's root handler.
    logger = logging.getLogger("rtseg_ros.training.trainer")
    with caplog.at_level("INFO", logger=logger.name):
        logger.addHandler(caplog.handler)
        try:
            trainer = Trainer(_tiny_recipe(tmp_path, "model.label_set=camvid", f"init.weights={path}"))
        finally:
            logger.removeHandler(caplog.handler)
    assert trainer.num_classes == 11
    message = next(r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage())
    assert "19 classes" in message and "to 11 classes" in message and "classifier" in message
    state, original = trainer.model.state_dict(), source.state_dict()
    assert torch.equal(state["encoder.conv1.weight"], original["encoder.conv1.weight"])
    reinitialised = [k for k in state if state[k].shape != original[k].shape]
    assert reinitialised and all(k in message for k in reinitialised)
