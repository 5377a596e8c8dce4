"""Class ids at the camera's size from the network's low-resolution logits, without full-resolution logits.

The labels a network gives are ``argmax_c resize(logits)[c]``: a bilinear resize of a CxHxW tensor (19
channels at 480x640 is 23 MB of float32) then a reduction over it. On a CPU that is most of a small
network's frame (ATONet at 64x128 in, 480x640 out: 46 ms of eager PyTorch on one core, 18 ms in ONNX
Runtime, the network itself a few ms).

Every output pixel of a bilinear resize is a convex combination (weights >= 0, summing to 1) of the
four logits vectors at the corners of its source cell, so within a cell:

* a class whose score is at least some other class's at all four corners is at least as large
  everywhere in the cell; a class that loses to *one* class at every corner never wins there. The
  class with the largest smallest corner score sets a floor every pixel's maximum reaches; only
  classes whose largest corner score reaches it are candidates.
* With one candidate (the interior of a region: almost every cell) its label fills the cell; with two,
  the label follows the sign of one interpolated difference; only cells with three or more candidates
  need every class interpolated, and only at their own pixels.

That gives the same labels as resize-then-argmax, in exact arithmetic, ties to the lowest class as
``argmax``; float rounding can only differ where two classes' scores agree to rounding (the tests check
this against :func:`torch.nn.functional.interpolate`). Confidence (the softmax maximum) needs every class
at every pixel and is not computed here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Above this share of pixels in cells with three or more candidates (noisy logits: random weights at a
# tiny size), interpolating every class everywhere is cheaper than gathering them pixel by pixel.
_DENSE_SHARE = 0.25


def _source_grid(output: int, source: int, align_corners: bool,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output index's lower source index and the weight of the next one, as PyTorch's bilinear
    resize computes them (``area_pixel_compute_source_index``, no scale factor given)."""
    index = torch.arange(output, dtype=torch.float32, device=device)
    if align_corners:
        position = index * ((source - 1) / (output - 1) if output > 1 else 0.0)
    else:
        position = ((index + 0.5) * (source / output) - 0.5).clamp(min=0.0)
    lower = position.floor().to(torch.int64).clamp(max=source - 1)
    return lower, (position - lower).clamp(0.0, 1.0)


class UpsampledLabels:
    """Labels (HxW uint8) at ``output_size`` from 1xCxhxw logits: ``argmax`` of the network's final
    bilinear resize, computed cell by cell (see the module's text). Built once per output size: it
    keeps the source grid of that size.

    Args:
        output_size: (height, width) of the labels.
        align_corners: the network's final resize's ``align_corners``.
    """

    def __init__(self, output_size: Sequence[int], align_corners: bool):
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.align_corners = bool(align_corners)
        self._grids: dict[tuple[int, int, torch.device], tuple[torch.Tensor, ...]] = {}

    def _grid(self, source: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (*source, device)
        grid = self._grids.get(key)
        if grid is None:
            rows, row_weight = _source_grid(self.output_size[0], source[0], self.align_corners, device)
            cols, col_weight = _source_grid(self.output_size[1], source[1], self.align_corners, device)
            grid = self._grids[key] = (rows, row_weight.view(-1, 1), cols, col_weight.view(1, -1))
        return grid

    def dense(self, logits: torch.Tensor) -> torch.Tensor:
        """The reference computation of :meth:`batch`: resize every class, then argmax."""
        resized = F.interpolate(logits.float(), size=self.output_size, mode="bilinear",
                                align_corners=self.align_corners)
        return resized.argmax(dim=1).to(torch.uint8)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One frame: 1xCxhxw logits in, HxW labels out (as :class:`~rtseg_ros.engines.base.LogitsFinish`)."""
        if logits.dim() != 4 or logits.shape[0] != 1:
            raise ValueError(f"expected 1xCxhxw logits, got {tuple(logits.shape)}")
        return self.batch(logits)[0]

    def batch(self, logits: torch.Tensor) -> torch.Tensor:
        """BxHxW labels of BxCxhxw logits, all at ``output_size``: one pass for the batch, so a batch of
        small frames pays the per-operation overhead once."""
        if logits.dim() != 4 or logits.shape[0] < 1:
            raise ValueError(f"expected BxCxhxw logits, got {tuple(logits.shape)}")
        frames, classes, height, width = logits.shape
        if classes > 256:
            raise ValueError(f"{classes} classes do not fit uint8 labels")
        rows, row_weight, cols, col_weight = self._grid((height, width), logits.device)
        scores = logits.float().contiguous()  # channels-last logits (eager) made planar: small maps
        # The four corners of the cell whose top-left source pixel is (y, x); the last row and column
        # repeat, as the resize clamps its upper source index there.
        right = torch.cat([scores[..., 1:], scores[..., -1:]], dim=3)
        below = torch.cat([scores[:, :, 1:], scores[:, :, -1:]], dim=2)
        below_right = torch.cat([right[:, :, 1:], right[:, :, -1:]], dim=2)
        lowest = torch.minimum(torch.minimum(scores, right), torch.minimum(below, below_right))
        highest = torch.maximum(torch.maximum(scores, right), torch.maximum(below, below_right))
        candidate = highest >= lowest.amax(dim=1, keepdim=True)
        class_index = torch.arange(classes, dtype=torch.int64, device=logits.device).view(1, -1, 1, 1)
        first = torch.where(candidate, class_index, classes).amin(dim=1, keepdim=True)
        last = torch.where(candidate, class_index, 0).amax(dim=1, keepdim=True)

        def at_pixels(cells: torch.Tensor) -> torch.Tensor:  # BxHxW from a Bxhxw map of the cells
            return cells.index_select(2, cols).index_select(1, rows)

        many = candidate.sum(dim=1) > 2
        unsure = at_pixels(many) if bool(many.any()) else None
        if unsure is not None and int(unsure.sum()) > _DENSE_SHARE * unsure.numel():
            return self.dense(logits)

        # One or two candidates: the sign of (first - last) interpolated, separably (columns, then rows).
        def difference(corner: torch.Tensor) -> torch.Tensor:
            return (corner.gather(1, first) - corner.gather(1, last))[:, 0]

        top = torch.lerp(difference(scores).index_select(2, cols), difference(right).index_select(2, cols),
                         col_weight)
        bottom = torch.lerp(difference(below).index_select(2, cols),
                            difference(below_right).index_select(2, cols), col_weight)
        margin = torch.lerp(top.index_select(1, rows), bottom.index_select(1, rows), row_weight)
        labels = torch.where(margin >= 0, at_pixels(first[:, 0]), at_pixels(last[:, 0])).to(torch.uint8)
        if unsure is not None:
            frame, ys, xs = unsure.nonzero(as_tuple=True)
            cell = (frame * height + rows[ys]) * width + cols[xs]
            across, down = col_weight[0, xs, None], row_weight[ys, 0, None]

            def corner_scores(corner: torch.Tensor) -> torch.Tensor:  # K pixels x C classes
                # Classes last (a small copy at the logits' size): each pixel's scores are one row to copy.
                return corner.permute(0, 2, 3, 1).reshape(-1, classes).index_select(0, cell)

            interpolated = torch.lerp(torch.lerp(corner_scores(scores), corner_scores(right), across),
                                      torch.lerp(corner_scores(below), corner_scores(below_right), across), down)
            labels[frame, ys, xs] = interpolated.argmax(dim=1).to(torch.uint8)
        return labels
