"""tensorrt backend (Torch-TensorRT). Runs only on a CUDA machine with torch_tensorrt; skips elsewhere.

What is checked there: fp16 engines agree with eager fp32 on > 99.5% of the pixels of the reference
input, a second construction loads the serialised engine instead of compiling, and int8 calibration
from a folder of images writes a reusable calibration cache.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig

SIZE = (256, 512)


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA and torch_tensorrt: CUDA is not available"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "needs CUDA and torch_tensorrt: torch_tensorrt is not installed"
    return None


SKIP = _skip_reason()
needs_tensorrt = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def _config(reference_dir, cache_dir, **overrides) -> SegmenterConfig:
    settings = dict(model="mfaranet", weights=str(reference_dir / "mfaranet_official_random_fp16.pt"),
                    input_height=SIZE[0], input_width=SIZE[1], device="cuda", output_resolution="network",
                    cache_dir=str(cache_dir))
    settings.update(overrides)
    return SegmenterConfig(**settings)


@pytest.mark.skipif(SKIP is None, reason="checks the error on a machine that cannot run TensorRT")
def test_tensorrt_unavailable_is_a_clear_config_error(reference_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs CUDA|CUDA is not available|torch_tensorrt"):
        Segmenter(_config(reference_dir, tmp_path, backend="tensorrt", precision="fp16"))


@pytest.mark.gpu
@pytest.mark.slow
@needs_tensorrt
def test_tensorrt_fp16_agrees_with_torch_fp32_and_reloads_from_cache(reference_dir, tmp_path, caplog):
    image = torch.load(reference_dir / "parity_input.pt").cuda()
    eager = Segmenter(_config(reference_dir, tmp_path, backend="torch"))
    expected, _ = eager.engine.run(image.contiguous(memory_format=torch.channels_last), SIZE, with_confidence=False)

    fp16 = Segmenter(_config(reference_dir, tmp_path, backend="tensorrt", precision="fp16"))
    labels, _ = fp16.engine.run(image.half(), SIZE, with_confidence=False)
    assert (labels == expected).float().mean().item() > 0.995

    engines = sorted((tmp_path / "tensorrt").glob("*/engine.ep"))
    assert len(engines) == 1
    stamp = engines[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="rtseg_ros.engines.cache"):
        reloaded = Segmenter(_config(reference_dir, tmp_path, backend="tensorrt", precision="fp16"))
        again, _ = reloaded.engine.run(image.half(), SIZE, with_confidence=False)
    assert "loaded cached TensorRT engine" in caplog.text
    assert engines[0].stat().st_mtime_ns == stamp
    assert (again == labels).float().mean().item() > 0.999


@pytest.mark.gpu
@pytest.mark.slow
@needs_tensorrt
def test_tensorrt_int8_calibrates_from_images_and_keeps_the_calibration(reference_dir, tmp_path):
    pytest.importorskip("modelopt", reason="int8 calibration needs nvidia-modelopt")
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    for seed in range(8):
        cv2.imwrite(str(frames / f"{seed:03d}.png"), make_scene(seed, *SIZE)[0][..., ::-1])
    config = _config(reference_dir, tmp_path / "cache", backend="tensorrt", precision="int8",
                     calibration_data=str(frames), calibration_frames=8)
    segmenter = Segmenter(config)
    result = segmenter.segment(make_scene(20, *SIZE)[0])
    assert result.labels.shape == SIZE and result.labels.dtype == np.uint8
    assert list((tmp_path / "cache" / "calibration").glob("*/quantizers.pt"))
