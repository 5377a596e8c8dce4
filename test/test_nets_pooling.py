"""ATONet's pyramid pooling: slices and means that equal adaptive_avg_pool2d at every size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtseg_ros.nets.atonet import SpatialPyramidPooling

# Feature-map sizes (stride 32) of common and odd inputs, plus sizes no camera has: grids that do
# not divide the map, maps smaller than the grid, single rows and columns.
ODD_SIZES = [(15, 20), (12, 20), (23, 40), (19, 30), (7, 13), (9, 11), (11, 9), (13, 7), (5, 3), (3, 5),
             (1, 7), (7, 1), (17, 31), (31, 17), (29, 37), (6, 10), (10, 6), (14, 21), (25, 25), (2, 2),
             (33, 47), (8, 11), (8, 13)]


@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{h}x{w}" for h, w in ODD_SIZES])
def test_average_pool_equals_adaptive_avg_pool2d(size):
    height, width = size
    x = torch.randn(2, 5, height, width, generator=torch.Generator().manual_seed(height * 100 + width))
    grids = {(bins, max(1, round(bins * width / height))) for bins in (8, 4, 2)} | {(3, 7), (height, 1), (1, width)}
    for grid in sorted(grids):
        expected = F.adaptive_avg_pool2d(x, grid)
        got = SpatialPyramidPooling.average_pool(x, grid)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5, f"grid {grid}"


def test_module_output_is_unchanged_by_the_pooling_rewrite():
    torch.manual_seed(0)
    module = SpatialPyramidPooling(32, 8).eval()
    x = torch.randn(1, 32, 15, 20)
    with torch.no_grad():
        ours = module(x)
        # The authors' formulation, with adaptive pooling put back.
        original_pool = SpatialPyramidPooling.average_pool
        try:
            SpatialPyramidPooling.average_pool = staticmethod(F.adaptive_avg_pool2d)
            reference = module(x)
        finally:
            SpatialPyramidPooling.average_pool = staticmethod(original_pool)
    assert (ours - reference).abs().max().item() < 1e-5


def test_exported_pyramid_pooling_has_no_adaptive_pooling():
    module = SpatialPyramidPooling(16, 4).eval()
    with torch.no_grad():
        exported = torch.export.export(module, (torch.randn(1, 16, 15, 20),), strict=False)
    ops = {str(node.target) for node in exported.run_decompositions().graph.nodes if node.op == "call_function"}
    assert not any("adaptive" in op for op in ops), sorted(ops)
    assert "aten.mean.dim" in ops
