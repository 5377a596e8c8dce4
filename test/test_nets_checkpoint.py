"""Loading the authors' checkpoints in every wrapping, our own format, and the errors for bad files."""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from rtseg_ros.datasets.labels import get_label_set
from rtseg_ros.nets import MODEL_NAMES, WeightsError, build_model, load_weights, save_weights, weights_hash
from rtseg_ros.nets.checkpoint import load_checkpoint, read_checkpoint_info
from rtseg_ros.nets.encoder import load_imagenet_weights
from rtseg_ros.nets.weights import load_manifest, resolve_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mfaranet_official(reference_dir: Path) -> dict[str, torch.Tensor]:
    """The official MFARANet state_dict (class ``MFARANet`` names) without the ``module.`` prefix."""
    checkpoint = torch.load(reference_dir / "mfaranet_official_random_fp16.pt")
    return OrderedDict((k.removeprefix("module."), v) for k, v in checkpoint["state_dict"].items())


@pytest.fixture(scope="module")
def atonet_official(reference_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(reference_dir / "atonet_official_random_fp16.pt")


@pytest.fixture(scope="module")
def mfaranet_loaded(reference_dir: Path) -> dict[str, torch.Tensor]:
    """Our state_dict after loading the official file as published."""
    model = load_weights(build_model("mfaranet"), reference_dir / "mfaranet_official_random_fp16.pt")
    return model.state_dict()


def _scale_choice_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames class-MFARANet keys to MFARANet_Scale_Choice keys (per the reference key mapping)."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^layer([1-4])\.", r"layer\1.0.", key)
        renamed[key.replace("HMSA_attentions.", "ASFM_attentions.")] = value
    return renamed


def _assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------------------------
# The authors' MFARANet files


def test_official_mfaranet_file_as_published(mfaranet_loaded, mfaranet_official) -> None:
    # The head of scale 2 is upstream multi_loss_head.1; the stem is upstream layer0.0.
    assert torch.equal(
        mfaranet_loaded["scale_heads.scale2.weight"], mfaranet_official["multi_loss_head.1.0.weight"].float()
    )
    assert torch.equal(mfaranet_loaded["encoder.conv1.6.weight"], mfaranet_official["layer0.0.6.weight"].float())
    assert torch.equal(
        mfaranet_loaded["fusion.attention.scale4.4.weight"], mfaranet_official["HMSA_attentions.3.4.weight"].float()
    )
    assert all(v.dtype != torch.float16 for v in mfaranet_loaded.values())


@pytest.mark.parametrize(
    "wrap",
    ["bare", "model", "net", "module_prefix_bare", "scale_choice", "with_training_keys"],
)
def test_official_mfaranet_wrappings(wrap, tmp_path, mfaranet_official, mfaranet_loaded) -> None:
    state = dict(mfaranet_official)
    if wrap == "bare":
        obj = state
    elif wrap in ("model", "net"):
        obj = {wrap: state, "epoch": 3}
    elif wrap == "module_prefix_bare":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "scale_choice":
        obj = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in _scale_choice_names(state).items()}}
    else:
        extra = {
            "criterion.seg_loss.nll_loss.weight": torch.ones(19),
            "aux_head.0.weight": torch.zeros(128, 256, 3, 3),
            "aux_head.4.bias": torch.zeros(19),
        }
        obj = {"state_dict": {f"module.{k}": v for k, v in {**state, **extra}.items()}}
    model = load_weights(build_model("mfaranet"), _save(obj, tmp_path / "w.pth"))
    _assert_same_state(model, mfaranet_loaded)


def test_official_full_checkpoint_into_pruned_model(reference_dir, mfaranet_loaded) -> None:
    model = build_model("mfaranet", scales=(2,))
    report = load_checkpoint(model, reference_dir / "mfaranet_official_random_fp16.pt")
    _assert_same_state(model, {k: v for k, v in mfaranet_loaded.items() if k in model.state_dict()})
    # Boundary heads are training-only; attention, other heads and deeper alignment steps are pruned away.
    assert any(k.startswith("boundary_heads.") for k in report.ignored)
    assert "fusion.attention.scale1.0.weight" in report.ignored
    assert "alignments.2.flow.weight" in report.ignored


def test_scale_choice_pruned_checkpoint(tmp_path, mfaranet_official, mfaranet_loaded) -> None:
    # MFARANet_Scale_Choice([2]) has no attention heads at all.
    state = {k: v for k, v in _scale_choice_names(mfaranet_official).items() if not k.startswith("ASFM_")}
    model = load_weights(build_model("mfaranet", scales=(2,)), _save({"state_dict": state}, tmp_path / "p.pth"))
    _assert_same_state(model, {k: v for k, v in mfaranet_loaded.items() if k in model.state_dict()})
    with pytest.raises(WeightsError, match="missing keys.*fusion.attention"):
        load_weights(build_model("mfaranet"), tmp_path / "p.pth")


# ------------------------------------------------------------------------------------------------
# The authors' ATONet files


@pytest.mark.parametrize("wrap", ["bare_ordered_dict", "module_prefix"])
def test_official_atonet_wrappings(wrap, tmp_path, reference_dir, atonet_official) -> None:
    obj = atonet_official if wrap == "bare_ordered_dict" else {f"module.{k}": v for k, v in atonet_official.items()}
    model = load_weights(build_model("atonet"), _save(obj, tmp_path / "a.pth"))
    assert torch.equal(model.state_dict()["classifier.4.weight"], atonet_official["cls.4.weight"].float())
    assert torch.equal(model.state_dict()["projections.4.0.weight"], atonet_official["up5.blend_conv.0.weight"].float())


def test_atonet_auxiliary_classifiers_load_with_training_heads(reference_dir, atonet_official) -> None:
    plain = build_model("atonet")
    report = load_checkpoint(plain, reference_dir / "atonet_official_random_fp16.pt")
    assert "aux_classifiers.aux3.3.weight" in report.ignored
    with_heads = build_model("atonet", training_heads=True)
    load_weights(with_heads, reference_dir / "atonet_official_random_fp16.pt")
    for index in range(1, 6):
        assert torch.equal(
            with_heads.state_dict()[f"aux_classifiers.aux{index}.0.weight"],
            atonet_official[f"aux_cls{index}.0.weight"].float(),
        )


def test_wrong_network_is_rejected(reference_dir) -> None:
    with pytest.raises(WeightsError, match="ATONet weights, the model is 'mfaranet'"):
        load_weights(build_model("mfaranet"), reference_dir / "atonet_official_random_fp16.pt")
    with pytest.raises(WeightsError, match="MFARANet weights, the model is 'atonet'"):
        load_weights(build_model("atonet"), reference_dir / "mfaranet_official_random_fp16.pt")


# ------------------------------------------------------------------------------------------------
# Our own format


@pytest.mark.parametrize("name, scales", [("mfaranet", (1, 3)), ("atonet", (1, 2, 3, 4))])
def test_own_format_round_trip(name, scales, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(name, 11, scales)
    path = save_weights(model, tmp_path / "sub" / "ours.pth", model_name=name, label_set="camvid", extra={"epoch": 7})
    assert not list(path.parent.glob(".*.tmp")), "the temporary file must be gone"
    info = read_checkpoint_info(path)
    assert info == {"format": "rtseg_ros/1", "model": name, "num_classes": 11, "scales": list(scales),
                    "label_set": "camvid", "epoch": 7}
    loaded = load_weights(build_model(name, 11, scales), path)
    _assert_same_state(loaded, model.state_dict())
    assert len(weights_hash(path)) == 64 and weights_hash(path) == weights_hash(path)


def test_class_count_mismatch(tmp_path) -> None:
    path = save_weights(build_model("mfaranet", 11), tmp_path / "camvid.pth", model_name="mfaranet", label_set="camvid")
    with pytest.raises(WeightsError, match="checkpoint has 11 classes, model has 19"):
        load_weights(build_model("mfaranet", 19), path)


def test_class_count_mismatch_official(tmp_path, atonet_official) -> None:
    state = {k: (v[:11] if k in ("cls.4.weight", "cls.4.bias") or re.match(r"aux_cls\d\.3\.", k) else v)
             for k, v in atonet_official.items()}
    with pytest.raises(WeightsError, match="checkpoint has 11 classes, model has 19"):
        load_weights(build_model("atonet"), _save(state, tmp_path / "a11.pth"))


def test_strict_classes_false_keeps_class_layers(tmp_path, mfaranet_official) -> None:
    source = build_model("mfaranet", 19)
    path = save_weights(source, tmp_path / "c19.pth", model_name="mfaranet", label_set="cityscapes")
    target = build_model("mfaranet", 11)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_checkpoint(target, path, strict_classes=False)
    assert report.checkpoint_classes == 19
    assert "scale_heads.scale1.weight" in report.reinitialized
    assert "fusion.attention.scale4.4.weight" in report.reinitialized
    assert not any(k.startswith("encoder.") for k in report.reinitialized)
    state = target.state_dict()
    for key in report.reinitialized:
        assert torch.equal(state[key], before[key])
    assert torch.equal(state["encoder.conv1.0.weight"], source.state_dict()["encoder.conv1.0.weight"])


# ------------------------------------------------------------------------------------------------
# Bad files


def test_missing_file_says_where_weights_go(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"not found.*models/.*manifest"):
        load_weights(build_model("atonet"), tmp_path / "nope.pth")


def test_truncated_file(tmp_path, reference_dir) -> None:
    data = (reference_dir / "atonet_official_random_fp16.pt").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated, corrupt"):
        load_weights(build_model("atonet"), path)


@pytest.mark.parametrize("content", ["text", "list", "no_tensors", "foreign_state_dict"])
def test_not_a_checkpoint(content, tmp_path) -> None:
    path = tmp_path / "x.pth"
    if content == "text":
        path.write_text("this is not a checkpoint\n")
        match = "cannot read"
    elif content == "list":
        torch.save([torch.zeros(2)], path)
        match = "holds a list"
    elif content == "no_tensors":
        torch.save({"epoch": 1, "lr": 0.01}, path)
        match = "no state_dict"
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
        match = "not an MFARANet or ATONet state_dict"
    with pytest.raises(WeightsError, match=match):
        load_weights(build_model("atonet"), path)


def test_missing_and_unknown_keys_are_named(tmp_path, atonet_official, mfaranet_official) -> None:
    state = dict(atonet_official)
    del state["final_ocnv.0.weight"]
    with pytest.raises(WeightsError, match=r"missing keys fusion\.0\.weight"):
        load_weights(build_model("atonet"), _save(state, tmp_path / "m.pth"))
    state = {**atonet_official, "final_ocnv.0.weight": torch.zeros(128, 128, 1, 1)}
    wrong = re.escape("wrong shapes for fusion.0.weight (128, 128, 1, 1) vs (128, 128, 3, 3)")
    with pytest.raises(WeightsError, match=wrong):
        load_weights(build_model("atonet"), _save(state, tmp_path / "s.pth"))
    state = {**mfaranet_official, "extra_branch.0.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"unknown keys.*extra_branch\.0\.weight"):
        load_weights(build_model("mfaranet"), _save(state, tmp_path / "u.pth"))
    ours = build_model("atonet").state_dict()
    ours["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"unexpected keys decoder\.extra\.weight"):
        load_weights(build_model("atonet"), _save(ours, tmp_path / "o.pth"))


def test_errors_are_value_errors() -> None:
    assert issubclass(WeightsError, ValueError)


# ------------------------------------------------------------------------------------------------
# ImageNet encoder weights


def test_imagenet_weights_deep_and_standard_stem(tmp_path, mfaranet_official, atonet_official) -> None:
    # The authors' deep-stem ImageNet file and torchvision's resnet18 use conv1/bn1/layerN/fc names; build
    # such files from the segmentation checkpoints' backbones (upstream layer0.0 = conv1, layer0.1 = bn1).
    for name, official in (("mfaranet", mfaranet_official), ("atonet", atonet_official)):
        imagenet = {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
        for key, value in official.items():
            key = re.sub(r"^layer0\.0\.", "conv1.", re.sub(r"^layer0\.1\.", "bn1.", key))
            if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")):
                imagenet[key] = value.float()
        path = _save(imagenet, tmp_path / f"{name}_imagenet.pth")
        model = build_model(name)
        loaded = load_imagenet_weights(model, path)
        assert sorted(loaded) == sorted(model.encoder.state_dict())
        assert not any(k.startswith("fc.") for k in loaded)
        for key, value in model.encoder.state_dict().items():
            assert torch.equal(value, imagenet[key]), key
    with pytest.raises(WeightsError, match="standard stem"):
        load_imagenet_weights(build_model("atonet"), tmp_path / "mfaranet_imagenet.pth")


# ------------------------------------------------------------------------------------------------
# Manifest and resolver


def test_manifest_entries_are_consistent() -> None:
    entries = load_manifest(REPO / "models" / "manifest.yaml")
    assert {"mfaranet_cityscapes_train", "mfaranet_cityscapes_trainval"} <= set(entries)
    for entry in entries.values():
        assert entry.model in MODEL_NAMES
        assert entry.num_classes == get_label_set(entry.label_set).num_classes
        assert entry.file.endswith(".pth")
        if entry.source.startswith("https://"):  # published by the authors: fetched by the user
            assert entry.reported_miou
            continue
        # Shipped in models/: the file is there, pinned by its hash, with the quality it was measured at.
        shipped = REPO / "models" / entry.file
        assert shipped.is_file(), f"{entry.name}: {shipped} is missing"
        assert entry.sha256 == weights_hash(shipped)
        assert entry.details["reproduce"].startswith("rtseg train ")
        assert entry.details["validation_miou"] >= 0.79


def test_resolve_weights(tmp_path, monkeypatch) -> None:
    models = tmp_path / "store"
    models.mkdir()
    (models / "manifest.yaml").write_text(yaml.safe_dump({"models": {
        "demo": {"model": "atonet", "label_set": "cityscapes", "num_classes": 19, "file": "demo.pth",
                 "source": "https://example.org/demo.pth", "sha256": None},
        "pinned": {"model": "atonet", "label_set": "cityscapes", "num_classes": 19, "file": "pinned.pth",
                   "source": "https://example.org/pinned.pth", "sha256": "0" * 64},
    }}))
    monkeypatch.setenv("RTSEG_MODELS_DIR", str(models))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=r"download demo\.pth from https://example\.org/demo\.pth.*models/"):
        resolve_weights("demo")
    (models / "demo.pth").write_bytes(b"x")
    assert resolve_weights("demo") == models / "demo.pth"
    assert resolve_weights("demo.pth") == models / "demo.pth"
    assert resolve_weights(str(models / "demo.pth")) == models / "demo.pth"
    (models / "pinned.pth").write_bytes(b"y")
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights("pinned")
    with pytest.raises(WeightsError, match="known entries: demo, pinned"):
        resolve_weights("unknown")
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights("some/dir/missing.pth")
