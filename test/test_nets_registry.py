"""The model registry, the ``SegmentationModel`` contract, and a generic loader that knows no network."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rtseg_ros import names
from rtseg_ros.nets import (
    SegmentationModel,
    UpstreamCheckpoint,
    WeightsError,
    build_model,
    get_model_class,
    list_models,
    load_weights,
    register_model,
    save_weights,
)
from rtseg_ros.nets import registry
from rtseg_ros.nets.atonet import ATONet
from rtseg_ros.nets.checkpoint import KeyMap, load_checkpoint, read_checkpoint_info, rename_state_dict
from rtseg_ros.nets.mfaranet import MFARANet

NETS = Path(registry.__file__).parent


def _batch(height: int = 32, width: int = 32) -> Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------
# Registry


def test_registered_models_are_the_names_table() -> None:
    assert list_models() == names.MODEL_NAMES
    assert get_model_class("mfaranet") is MFARANet and get_model_class("ATONet") is ATONet
    for name in list_models():
        model_class = get_model_class(name)
        assert issubclass(model_class, SegmentationModel) and model_class.model_name == name
        assert registry.get_model_entry(name).upstream is not None, f"{name} has no checkpoint filter"


def test_register_model_refuses_bad_registrations() -> None:
    with pytest.raises(ValueError, match=r"'segformer' is not in rtseg_ros\.names\.MODEL_NAMES"):
        register_model("segformer")
    with pytest.raises(TypeError, match="SegmentationModel subclass"):
        register_model("mfaranet")(nn.Conv2d)

    class Impostor(SegmentationModel):
        pass

    with pytest.raises(ValueError, match="already registered by MFARANet"):
        register_model("mfaranet")(Impostor)
    assert get_model_class("mfaranet") is MFARANet
    with pytest.raises(ValueError, match="unknown model 'segformer'; choose one of mfaranet, atonet"):
        get_model_class("segformer")


# ------------------------------------------------------------------------------------------------
# The contract of the base class


@pytest.mark.parametrize("name", names.MODEL_NAMES)
def test_forward_is_the_final_resize_of_the_logits(name) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, training_heads=True).eval()
    x = _batch(64, 96)
    with torch.inference_mode():
        logits, extra = model.logits(x)
        resized = model(x, output_size=(40, 50))
        train = model.forward_train(x)
    assert extra == {}, "training outputs are never part of inference"
    assert logits.shape == (1, 5, 64 // model.output_stride, 96 // model.output_stride)
    torch.testing.assert_close(resized, model.resize_logits(logits, (40, 50)))
    torch.testing.assert_close(train["out"], model(x))
    assert len(train) > 1  # per-scale (MFARANet) or auxiliary (ATONet) outputs


def test_scales_are_part_of_the_base_contract() -> None:
    # ATONet keeps no scales of its own; the base reports its one setting, all scales.
    assert "scales" not in vars(ATONet)
    assert (MFARANet.scale_selection, ATONet.scale_selection) == (True, False)
    assert build_model("atonet").scales == names.ALL_SCALES
    assert build_model("mfaranet", scales=(4, 2)).scales == (2, 4)
    with pytest.raises(ValueError, match="ATONet has no scale selection"):
        ATONet(19, (1, 2))
    with pytest.raises(ValueError, match="positive integer"):
        MFARANet(True)


# ------------------------------------------------------------------------------------------------
# A network the loader has never heard of, with its own upstream layout


class ToyNet(SegmentationModel):
    output_stride = 2
    align_corners = False

    def __init__(self, num_classes: int = 3, scales=names.ALL_SCALES, *, training_heads: bool = False) -> None:
        super().__init__(num_classes, scales)
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(4, num_classes, 1)
        self.aux = nn.Conv2d(4, num_classes, 1) if training_heads else None

    def logits(self, x: Tensor, *, training_outputs: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        feature = self.stem(x)
        extra = {"aux": self.aux(feature)} if training_outputs and self.aux is not None else {}
        return self.classifier(feature), extra


def _toy_filter(state, model):
    return rename_state_dict(state, KeyMap((r"^backbone\.", "stem."), (r"^head\.", "classifier."),
                                           (r"^deep_sup\.", "aux.")), network="ToyNet", ignore=("loss.",))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[ToyNet]:
    monkeypatch.setattr(registry, "MODEL_NAMES", (*names.MODEL_NAMES, "toy"))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    return register_model("toy", upstream=UpstreamCheckpoint(markers=("backbone.",), filter_fn=_toy_filter))(ToyNet)


def test_a_new_network_needs_no_change_to_the_loader(toy, tmp_path: Path) -> None:
    assert list_models() == (*names.MODEL_NAMES, "toy") and toy.model_name == "toy"
    torch.manual_seed(0)
    source = build_model("toy", 3)
    upstream = {"module.backbone.weight": source.stem.weight.half(), "module.backbone.bias": source.stem.bias,
                "module.head.weight": source.classifier.weight, "module.head.bias": source.classifier.bias,
                "module.loss.weight": torch.ones(3)}
    path = tmp_path / "toy_official.pth"
    torch.save({"epoch": 9, "state_dict": upstream}, path)

    model = build_model("toy", 3)
    report = load_checkpoint(model, path)
    assert report.source == "toy-official" and report.ignored == ["loss.weight"]
    assert torch.equal(model.stem.weight, source.stem.weight.half().float())
    assert torch.equal(model.classifier.weight, source.classifier.weight)
    # Our own format round-trips through the same generic code.
    ours = save_weights(model, tmp_path / "toy.pth", model_name="toy", label_set="camvid")
    assert read_checkpoint_info(ours)["scales"] == list(names.ALL_SCALES)
    assert torch.equal(load_weights(build_model("toy", 3), ours).classifier.bias, source.classifier.bias)

    with pytest.raises(WeightsError, match="holds ToyNet weights, the model is 'mfaranet'"):
        load_weights(build_model("mfaranet"), path)
    torch.save({"elsewhere.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(WeightsError, match="not an MFARANet, ATONet or ToyNet state_dict"):
        load_weights(model, tmp_path / "foreign.pth")
    torch.save({**upstream, "module.backbone_extra.weight": torch.zeros(1)}, tmp_path / "unknown.pth")
    with pytest.raises(WeightsError, match=r"unknown keys in the ToyNet checkpoint: backbone_extra\.weight"):
        load_weights(model, tmp_path / "unknown.pth")


def test_generic_modules_name_no_network() -> None:
    # The upstream names live beside each network; the loader, base and registry stay generic.
    network_specific = re.compile(r"HMSA|ASFM|blend_conv|multi_loss_head|stages_offset|final_ocnv|aux_cls|"
                                  r"\"mfaranet\"|\"atonet\"|import (?:MFARANet|ATONet)")
    for module in ("checkpoint.py", "base.py", "registry.py"):
        text = (NETS / module).read_text(encoding="utf-8")
        assert not network_specific.findall(text), f"{module}: {network_specific.findall(text)}"
