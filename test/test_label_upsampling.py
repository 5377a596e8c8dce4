"""Labels cell by cell (engines.label_upsampling) against the reference: bilinear resize of every class,
then argmax; and the engines that use it on a CPU (one build serves every output size)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtseg_ros.engines import Segmenter, SegmenterConfig
from rtseg_ros.engines.label_upsampling import UpsampledLabels


def _reference(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of resize-then-argmax, and each pixel's gap between its two best classes."""
    resized = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)[0]
    best = resized.topk(min(2, resized.shape[0]), dim=0).values
    gap = best[0] - best[-1] if resized.shape[0] > 1 else torch.full(size, float("inf"))
    return resized.argmax(dim=0).to(torch.uint8), gap


def _smooth_logits(classes: int, height: int, width: int, noise: float, seed: int) -> torch.Tensor:
    """Region-like logits (a coarse random field resized up) with per-pixel noise on top."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, max(2, height // 4), max(2, width // 4), generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True) * 5
    return field + noise * torch.randn(1, classes, height, width, generator=generator)


def _assert_same_labels(labels: torch.Tensor, logits: torch.Tensor, size: tuple[int, int],
                        align_corners: bool) -> None:
    reference, gap = _reference(logits, size, align_corners)
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == size
    differ = labels != reference
    # Float rounding may only decide pixels whose two best classes agree to rounding.
    assert bool((gap[differ] < 1e-4).all()), f"{int(differ.sum())} labels differ at a clear maximum"
    assert int(differ.sum()) <= max(1, labels.numel() // 100_000)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("classes, source, size, noise", [
    (19, (16, 32), (480, 640), 0.0),      # a small network's stride-4 logits to a VGA camera
    (19, (64, 128), (720, 1280), 0.05),
    (11, (64, 128), (60, 100), 0.0),      # labels smaller than the logits
    (19, (17, 23), (101, 203), 0.1),      # sizes with no common factor
    (19, (8, 8), (8, 8), 1.0),            # noisy: most cells have many candidates
    (3, (5, 5), (64, 64), 3.0),
    (1, (8, 8), (20, 20), 0.0),           # one class
    (5, (1, 1), (7, 9), 0.0),             # a single logits pixel
    (5, (1, 7), (1, 13), 0.0),
    (19, (30, 40), (1, 1), 0.0),
])
def test_labels_equal_resize_then_argmax(classes, source, size, noise, align_corners):
    logits = _smooth_logits(classes, *source, noise, seed=classes + source[0] + size[1])
    labels = UpsampledLabels(size, align_corners)(logits)
    _assert_same_labels(labels, logits, size, align_corners)


@pytest.mark.parametrize("noise", [0.0, 1.0])  # 1.0: cells of many candidates, gathered pixel by pixel
def test_a_batch_equals_its_frames_one_by_one(noise):
    logits = torch.cat([_smooth_logits(19, 16, 32, noise, seed) for seed in range(3)])
    labels = UpsampledLabels((120, 160), False)
    together = labels.batch(logits)
    assert tuple(together.shape) == (3, 120, 160)
    for index in range(3):
        assert torch.equal(together[index], labels(logits[index:index + 1]))


def test_ties_go_to_the_lowest_class_as_argmax():
    logits = torch.zeros(1, 4, 6, 6)
    assert torch.equal(UpsampledLabels((12, 12), False)(logits), torch.zeros(12, 12, dtype=torch.uint8))
    logits[:, 2] = 1.0
    logits[:, 3] = 1.0
    assert torch.equal(UpsampledLabels((12, 12), False)(logits), torch.full((12, 12), 2, dtype=torch.uint8))


def test_trained_network_logits():
    """The shipped toy model on held-out synthetic scenes: the logits a real network gives."""
    from rtseg_ros.datasets.synthetic import make_scene
    from rtseg_ros.engines.preprocessing import Preprocessor
    from rtseg_ros.nets import build_model, load_weights
    from rtseg_ros.nets.weights import resolve_weights

    model = load_weights(build_model("atonet"), resolve_weights("synthetic_toy")).eval()
    preprocess = Preprocessor((128, 256), torch.device("cpu"), channels_last=False)
    for seed in (300, 301):
        rgb, _ = make_scene(seed, 128, 256)
        image = preprocess(torch.from_numpy(rgb))
        with torch.inference_mode():
            logits, _ = model.logits(image)
        for size in ((480, 640), (128, 256)):
            _assert_same_labels(UpsampledLabels(size, model.align_corners)(logits), logits, size,
                                model.align_corners)


def test_rejects_a_batch_or_too_many_classes():
    with pytest.raises(ValueError, match="1xCxhxw"):
        UpsampledLabels((8, 8), False)(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        UpsampledLabels((8, 8), False)(torch.zeros(1, 300, 4, 4))


def test_torch_engine_labels_only_match_the_full_head():
    """Eager PyTorch on a CPU: labels-only frames come cell by cell, frames with confidence from the full
    resize; both give the same labels."""
    segmenter = Segmenter(SegmenterConfig(model="atonet", input_height=64, input_width=128, backend="torch"))
    engine = segmenter.engine
    image = torch.randn(1, 3, 64, 128).contiguous(memory_format=torch.channels_last)
    labels, confidence = engine.run(image, (240, 320), with_confidence=False)
    full_labels, full_confidence = engine.run(image, (240, 320), with_confidence=True)
    assert confidence is None and full_confidence is not None
    assert (labels == full_labels).float().mean().item() > 0.9999


def test_onnxruntime_labels_only_need_one_export_for_every_output_size(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    config = SegmenterConfig(model="atonet", input_height=64, input_width=128, backend="onnxruntime",
                             cache_dir=str(tmp_path))
    segmenter = Segmenter(config)
    image = torch.randn(1, 3, 64, 128)
    outputs = [segmenter.engine.run(image, size, with_confidence=False)[0] for size in ((64, 128), (240, 320))]
    assert [tuple(labels.shape) for labels in outputs] == [(64, 128), (240, 320)]
    assert len(list((tmp_path / "onnx").glob("*/model.onnx"))) == 1  # the network body, for both sizes


def test_openvino_uses_cells_for_batches_and_its_compiled_head_for_one_frame(tmp_path):
    pytest.importorskip("openvino")
    from rtseg_ros.engines import BatchFrame
    from rtseg_ros.engines.openvino_engine import OpenVINOEngine

    config = SegmenterConfig(model="atonet", input_height=64, input_width=128, backend="openvino", max_batch=2,
                             cache_dir=str(tmp_path))
    segmenter = Segmenter(config)
    assert isinstance(segmenter.engine, OpenVINOEngine)
    frames = [BatchFrame(torch.randint(0, 255, (120, 160, 3), dtype=torch.uint8).numpy()) for _ in range(2)]
    batched = segmenter.segment_batch(frames)
    assert isinstance(segmenter.engine._finish((120, 160), False), UpsampledLabels)
    single = [segmenter.segment(frame.pixels) for frame in frames]
    # One frame ran the compiled head (the model profiles and benchmark_app measure), not body + cells.
    assert not segmenter.engine._uses_cell_labels(False)
    assert segmenter.engine.compiled_artifact((120, 160)).is_file()
    for one, many in zip(single, batched):
        assert (one.labels == many.labels).mean() > 0.999
