"""ONNX Runtime backend: agreement with torch on the reference weights, and its export cache.

One MFARANet export at the reference input size is made per session (the exporter takes tens of
seconds on CPU); the cache tests then reuse or deliberately damage copies of it.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import Segmenter, SegmenterConfig

pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (pip install 'rtseg_ros[onnx]')")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (pip install 'rtseg_ros[onnx]')")

SIZE = (256, 512)  # the size of the reference input


def _config(weights: str, cache_dir, backend: str) -> SegmenterConfig:
    return SegmenterConfig(model="mfaranet", weights=weights, input_height=SIZE[0], input_width=SIZE[1],
                           backend=backend, output_resolution="network", cache_dir=str(cache_dir))


@pytest.fixture(scope="module")
def weights(reference_dir):
    return str(reference_dir / "mfaranet_official_random_fp16.pt")


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    """(cache dir holding one export, the segmenter that made it)."""
    cache_dir = tmp_path_factory.mktemp("onnx-cache")
    segmenter = Segmenter(_config(weights, cache_dir, "onnxruntime"))
    segmenter.warmup()
    return cache_dir, segmenter


@pytest.fixture(scope="module")
def torch_segmenter(weights, tmp_path_factory):
    return Segmenter(_config(weights, tmp_path_factory.mktemp("torch-cache"), "torch"))


def _artifacts(cache_dir):
    return sorted((cache_dir / "onnx").glob("*/model.onnx"))


def test_onnxruntime_agrees_with_torch_on_the_reference_input(exported, torch_segmenter, reference_dir):
    _, segmenter = exported
    image = torch.load(reference_dir / "parity_input.pt")
    ort_labels, _ = segmenter.engine.run(image.contiguous(), SIZE, with_confidence=False)
    torch_labels, _ = torch_segmenter.engine.run(image.contiguous(memory_format=torch.channels_last), SIZE,
                                                 with_confidence=False)
    official = torch.load(reference_dir / "mfaranet_official_out.pt")["logits"].argmax(1)[0].to(torch.uint8)
    assert (ort_labels == torch_labels).float().mean().item() > 0.999
    assert (ort_labels == official).float().mean().item() > 0.999


def test_onnxruntime_frames_and_confidence_agree_with_torch(exported, torch_segmenter):
    _, segmenter = exported
    frame = make_scene(11, *SIZE)[0]
    ours = segmenter.segment(frame, color_order="rgb")
    reference = torch_segmenter.segment(frame, color_order="rgb", want_confidence=True)
    assert ours.labels.shape == SIZE and ours.labels.dtype == np.uint8 and ours.confidence is None
    assert (ours.labels == reference.labels).mean() > 0.999
    assert segmenter.engine.describe()["providers"] == ["CPUExecutionProvider"]


def test_export_cache_is_reused_without_exporting(exported, weights, monkeypatch):
    cache_dir, _ = exported
    before = [(p, p.stat().st_mtime_ns) for p in _artifacts(cache_dir)]
    assert len(before) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been loaded")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    segmenter = Segmenter(_config(weights, cache_dir, "onnxruntime"))
    segmenter.warmup()
    assert [(p, p.stat().st_mtime_ns) for p in _artifacts(cache_dir)] == before


def test_corrupt_export_is_rebuilt_with_a_log_line(exported, weights, tmp_path, caplog):
    cache_dir, first = exported
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir / "onnx", copy / "onnx")
    (artifact,) = _artifacts(copy)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    artifact.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="rtseg_ros.engines.cache"):
        segmenter = Segmenter(_config(weights, copy, "onnxruntime"))
        segmenter.warmup()
    assert "corrupt" in caplog.text and "rebuilding" in caplog.text
    frame = make_scene(12, *SIZE)[0]
    np.testing.assert_array_equal(segmenter.segment(frame).labels, first.segment(frame).labels)
