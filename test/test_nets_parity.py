"""Our networks reproduce the authors' outputs (reference data in ../shared/reference, see its README)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rtseg_ros.nets import build_model, load_weights

MAX_ABS_DIFF = 1e-3
MIN_ARGMAX_AGREEMENT = 0.9999

# variant -> (model name, scales, weight file, 256x512 reference file, its key); the odd-size key is f"{variant}_logits_s4"
VARIANTS = {
    "mfaranet": ("mfaranet", (1, 2, 3, 4), "mfaranet_official_random_fp16.pt", "mfaranet_official_out.pt", "logits"),
    "mfaranet_pruned": (
        "mfaranet", (2,), "mfaranet_official_random_fp16.pt", "mfaranet_pruned_official_out.pt", "logits_s4"
    ),
    "atonet": ("atonet", (1, 2, 3, 4), "atonet_official_random_fp16.pt", "atonet_official_out.pt", "logits"),
}


def _final_resize(name: str, logits_s4: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The authors' last operation, as stored in the reference files' recipes."""
    if name == "atonet":
        return F.interpolate(logits_s4, scale_factor=4, mode="bilinear", align_corners=False)
    return F.interpolate(logits_s4, size=size, mode="bilinear", align_corners=True)


def _assert_matches(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    max_diff = (ours - reference).abs().max().item()
    agreement = (ours.argmax(1) == reference.argmax(1)).double().mean().item()
    assert max_diff < MAX_ABS_DIFF, f"max abs logit difference {max_diff:.2e}"
    assert agreement > MIN_ARGMAX_AGREEMENT, f"argmax agreement {agreement:.6f}"


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, reference_dir: Path):
    name, scales, weights, _, _ = VARIANTS[request.param]
    model = load_weights(build_model(name, 19, scales), reference_dir / weights).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters()), "fp16 weights must be cast to float32"
    return request.param, model


def test_parity_256x512(variant, reference_dir: Path) -> None:
    key, model = variant
    name, _, _, out_file, out_key = VARIANTS[key]
    x = torch.load(reference_dir / "parity_input.pt")
    reference = torch.load(reference_dir / out_file)[out_key]
    if out_key == "logits_s4":
        reference = _final_resize(name, reference, tuple(x.shape[-2:]))
    with torch.inference_mode():
        ours = model(x)
    assert ours.shape[-2:] == x.shape[-2:]
    _assert_matches(ours, reference)


def test_parity_odd_size_144x208(variant, reference_dir: Path) -> None:
    key, model = variant
    name = VARIANTS[key][0]
    odd = torch.load(reference_dir / "parity_odd_144x208.pt")
    x = odd["input"]
    reference_s4 = odd[f"{key}_logits_s4"]
    with torch.inference_mode():
        # Asking for the stride-4 size returns the logits before the final resize (an identity resize).
        ours_s4 = model(x, output_size=reference_s4.shape[-2:])
        ours = model(x)
    _assert_matches(ours_s4, reference_s4)
    _assert_matches(ours, _final_resize(name, reference_s4, tuple(x.shape[-2:])))
