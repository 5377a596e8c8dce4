"""Network construction, shapes, pruning, training heads, complexity and ``rtseg info``."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rtseg_ros.cli.info import info
from rtseg_ros.nets import MODEL_NAMES, build_model
from rtseg_ros.nets.complexity import measure_complexity
from rtseg_ros.nets.encoder import ResNetEncoder

ALL_SUBSETS = [s for r in range(1, 5) for s in itertools.combinations((1, 2, 3, 4), r)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_batch(height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------
# Construction and shapes


def test_model_names() -> None:
    assert MODEL_NAMES == ("mfaranet", "atonet")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "segformer"}, "unknown model 'segformer'; choose one of mfaranet, atonet"),
        ({"name": "mfaranet", "scales": ()}, "non-empty"),
        ({"name": "mfaranet", "scales": (0, 2)}, r"taken from \(1, 2, 3, 4\)"),
        ({"name": "mfaranet", "scales": (5,)}, r"taken from \(1, 2, 3, 4\)"),
        ({"name": "mfaranet", "scales": (2, 2)}, "must not repeat"),
        ({"name": "mfaranet", "scales": ("a",)}, "must be integers"),
        ({"name": "mfaranet", "num_classes": 0}, "positive integer"),
        ({"name": "atonet", "scales": (2,)}, "ATONet has no scale selection"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_scales_are_sorted_and_atonet_accepts_default() -> None:
    assert build_model("mfaranet", scales=[3, 1]).scales == (1, 3)
    assert build_model("ATONet", scales=(4, 3, 2, 1)).model_name == "atonet"


@pytest.mark.parametrize("size", [(67, 91), (96, 160)])
def test_mfaranet_any_size(size) -> None:
    model = build_model("mfaranet", 7).eval()
    with torch.inference_mode():
        out = model(_random_batch(*size))
        resized = model(_random_batch(*size), output_size=(50, 70))
    assert out.shape == (1, 7, *size) and out.dtype == torch.float32
    assert resized.shape == (1, 7, 50, 70)
    assert model.output_stride == 4


def test_atonet_size_must_be_multiple_of_16() -> None:
    model = build_model("atonet").eval()
    with torch.inference_mode():
        assert model(_random_batch(64, 96)).shape == (1, 19, 64, 96)
        assert model(_random_batch(64, 96), output_size=(30, 40)).shape == (1, 19, 30, 40)
        with pytest.raises(ValueError, match="multiples of 16, got 72x96"):
            model(_random_batch(72, 96))


# ------------------------------------------------------------------------------------------------
# Training outputs


def test_mfaranet_forward_train() -> None:
    model = build_model("mfaranet", 5, scales=(1, 3)).eval()
    x = _random_batch(64, 96)
    with torch.inference_mode():
        outputs = model.forward_train(x)
        plain = model(x)
    assert set(outputs) == {"out", "scale1", "scale3"}
    assert torch.equal(outputs["out"], plain)
    assert outputs["scale1"].shape == outputs["scale3"].shape == (1, 5, 16, 24)


def test_atonet_training_heads() -> None:
    model = build_model("atonet", 11, training_heads=True).train()
    outputs = model.forward_train(_random_batch(64, 128))
    expected = {"out": (64, 128), "aux1": (16, 32), "aux2": (8, 16), "aux3": (4, 8), "aux4": (2, 4), "aux5": (2, 4)}
    assert {k: tuple(v.shape[-2:]) for k, v in outputs.items()} == expected
    assert all(v.shape[:2] == (1, 11) for v in outputs.values())
    outputs["out"].mean().backward()  # the graph is trainable
    model.eval()
    with torch.inference_mode():
        logits = model(_random_batch(64, 128))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 11, 64, 128)
    # Without training heads there is nothing auxiliary to return.
    assert set(build_model("atonet").eval().forward_train(_random_batch(32, 32))) == {"out"}


def test_aux_heads_are_not_part_of_inference() -> None:
    with_heads = build_model("atonet", training_heads=True)
    without = build_model("atonet")
    assert not any(k.startswith("aux_classifiers") for k in without.state_dict())
    assert any(k.startswith("aux_classifiers") for k in with_heads.state_dict())
    assert measure_complexity("atonet", height=64, width=64).parameters == sum(p.numel() for p in without.parameters())


# ------------------------------------------------------------------------------------------------
# Pruning


def _calls_per_module(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    counts: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
        for name, module in model.named_modules()
        if name
    ]
    with torch.inference_mode():
        model(x)
    for hook in hooks:
        hook.remove()
    return counts


@pytest.mark.parametrize("scales", ALL_SUBSETS)
def test_pruned_models_run_every_module_they_build(scales) -> None:
    model = build_model("mfaranet", 19, scales).eval()
    called = _calls_per_module(model, _random_batch(64, 64))
    with_parameters = {name for name, m in model.named_modules() if name and any(True for _ in m.parameters(False))}
    assert with_parameters <= set(called), f"built but never run: {sorted(with_parameters - set(called))}"
    deepest = max(scales)
    assert len(model.alignments) == deepest - 1
    assert len(model.aggregation.bottom_up) == deepest - 1
    assert set(model.scale_heads) == {f"scale{s}" for s in scales}
    assert (model.fusion is None) == (len(scales) == 1)


def test_pruned_to_scale_2_skips_work() -> None:
    full = build_model("mfaranet").eval()
    pruned = build_model("mfaranet", scales=(2,)).eval()
    calls_full = _calls_per_module(full, _random_batch(64, 64))
    calls_pruned = _calls_per_module(pruned, _random_batch(64, 64))
    skipped = set(calls_full) - set(calls_pruned)
    for name in ("alignments.1.flow", "alignments.2.flow", "aggregation.bottom_up.1", "aggregation.merge.1",
                 "scale_heads.scale1", "scale_heads.scale3", "scale_heads.scale4", "fusion"):
        assert name in skipped
    # The stage-2 feature needs only the finest flow field.
    assert calls_pruned["alignments.0.flow"] == 1
    full_cost = measure_complexity("mfaranet", height=256, width=512)
    pruned_cost = measure_complexity("mfaranet", scales=(2,), height=256, width=512)
    assert pruned_cost.flops < full_cost.flops and pruned_cost.parameters < full_cost.parameters


def test_pruned_model_equals_that_scale_of_the_full_model() -> None:
    torch.manual_seed(0)
    full = build_model("mfaranet", 19).eval()
    pruned = build_model("mfaranet", 19, scales=(3,)).eval()
    own = pruned.state_dict()
    pruned.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
    x = _random_batch(64, 96)
    with torch.inference_mode():
        reference = full.forward_train(x)["scale3"]
        ours = pruned(x, output_size=(16, 24))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Encoder


def test_encoder_layouts() -> None:
    deep = ResNetEncoder("deep", dilated=True)
    standard = ResNetEncoder("standard")
    deep_state, standard_state = deep.state_dict(), standard.state_dict()
    assert deep_state["conv1.0.weight"].shape == (64, 3, 3, 3)
    assert deep_state["conv1.6.weight"].shape == (128, 64, 3, 3)
    assert deep_state["layer1.0.downsample.0.weight"].shape == (64, 128, 1, 1)
    assert standard_state["conv1.weight"].shape == (64, 3, 7, 7)
    assert not any(k.startswith("layer1.0.downsample") for k in standard_state)
    for layer, dilation in (("layer3", 2), ("layer4", 4)):
        for block in getattr(deep, layer):
            assert block.conv2.dilation == (dilation, dilation) and block.conv1.dilation == (1, 1)
    with torch.inference_mode():
        features = deep(_random_batch(64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    with pytest.raises(ValueError, match="unknown stem"):
        ResNetEncoder("wide")


# ------------------------------------------------------------------------------------------------
# Complexity and the CLI


def test_complexity_matches_reference_figures() -> None:
    # Reference README: MFARANet 436 G / ATONet 268 G FLOPs (2 x MACs) at 1024x2048; parameters used at
    # inference 12,996,748 (MFARANet), 12,208,595 (pruned to scale 2), 13,304,531 (ATONet).
    full = measure_complexity("mfaranet")
    assert full.parameters == 12_996_748 and round(full.gflops) == 436
    assert measure_complexity("mfaranet", scales=(2,)).parameters == 12_208_595
    atonet = measure_complexity("atonet")
    assert atonet.parameters == 13_304_531 and round(atonet.gflops) == 268


def test_info_cli() -> None:
    runner = CliRunner()
    result = runner.invoke(info, ["--model", "mfaranet", "--scales", "2", "--size", "1024x2048"])
    assert result.exit_code == 0, result.output
    assert "12,208,595" in result.output
    assert f"{measure_complexity('mfaranet', scales=(2,)).gflops:.1f}" in result.output
    assert "2 x multiply-adds" in result.output
    result = runner.invoke(info, ["--model", "atonet", "--size", "512x1024", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parameters"] == 13_304_531 and data["height"] == 512
    assert abs(data["gflops"] - 268.0 / 4) < 1.0
    for args, message in (
        (["--model", "atonet", "--size", "500x1000"], "multiples of 16"),
        (["--size", "big"], "HEIGHTxWIDTH"),
        (["--scales", "7"], "scales must be taken from"),
    ):
        result = runner.invoke(info, args)
        assert result.exit_code == 2 and message in result.output, result.output
