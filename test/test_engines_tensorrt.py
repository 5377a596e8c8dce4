"""tensorrt backend (Torch-TensorRT).

On a CUDA machine with torch_tensorrt: fp16 engines agree with eager fp32 on > 99.5% of the pixels
of the reference input, a second construction loads the serialised ``.pt2`` engine instead of
compiling, and int8 calibration from a folder of images writes a reusable calibration cache.
Everywhere: the pieces around the build that need no TensorRT (labels cast, build outside
inference mode, artifact naming, cache keys, timing cache path). The graph audit is in
test_engines_trt_audit.py.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig
from rtseg_ros.engines.base import EngineSpec, InferenceEngine, SegmentationHead
from rtseg_ros.engines.cache import ArtifactCache, graph_source_sha256
from rtseg_ros.engines.tensorrt_engine import ENGINE_LABEL_DTYPE, network_dtype, tensorrt_head, timing_cache_path
from rtseg_ros.nets import build_model

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

    engines = sorted((tmp_path / "tensorrt").glob("*/engine.pt2"))
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


@pytest.mark.gpu
@pytest.mark.slow
@needs_tensorrt
def test_tensorrt_batches_of_1_to_max_batch_run_one_engine_and_agree_with_single_frames(reference_dir, tmp_path):
    from rtseg_ros.engines import BatchFrame

    segmenter = Segmenter(_config(reference_dir, tmp_path, backend="tensorrt", precision="fp16", max_batch=4,
                                  output_resolution="input"))
    segmenter.prepare_batch([(300, 600), SIZE])
    assert segmenter.batch_prepared
    frames = [BatchFrame(make_scene(30 + i, *size)[0]) for i, size in enumerate([(300, 600), SIZE, SIZE])]
    for count in (1, 3):
        for frame, result in zip(frames, segmenter.segment_batch(frames[:count], want_confidence=True)):
            single = segmenter.segment(frame.pixels, want_confidence=True)
            assert result.labels.shape == frame.pixels.shape[:2] and result.timings_ms["batch_size"] == count
            # fp16: the batched engine and the one-frame engine are two TensorRT builds (own kernels and
            # tactics), and the batched argmax runs on fp16 logits outside TensorRT.
            assert (result.labels == single.labels).mean() > 0.995
            assert np.abs(result.confidence - single.confidence).mean() < 1e-2
    assert len(list((tmp_path / "tensorrt").glob("*batch1to4*/engine.pt2"))) == 1


# ------------------------------------------------------------------------------ CPU checks
def test_engine_labels_are_int32_inside_and_uint8_outside():
    model = build_model("mfaranet", 19, (2,)).eval()
    image = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        inside = tensorrt_head(model, (64, 128), True)(image)
        outside = SegmentationHead(model, (64, 128), True)(image)
    assert inside[0].dtype == ENGINE_LABEL_DTYPE and outside[0].dtype == torch.uint8
    assert torch.equal(inside[0].to(torch.uint8), outside[0])
    assert torch.equal(inside[1], outside[1]) and outside[1].dtype == torch.float32


def test_confidence_is_the_max_softmax_probability():
    from rtseg_ros.engines.preprocessing import labels_and_confidence

    logits = torch.randn(1, 19, 8, 12)
    labels, confidence = labels_and_confidence(logits, True)
    probabilities = logits[0].softmax(dim=0)
    assert torch.equal(labels, probabilities.argmax(dim=0).to(torch.uint8))
    assert (confidence - probabilities.amax(dim=0)).abs().max().item() < 1e-6


def test_int8_quantizes_the_fp16_network():
    assert network_dtype("fp32") == torch.float32
    assert network_dtype("fp16") == torch.float16 and network_dtype("int8") == torch.float16


class _RecordingEngine(InferenceEngine):
    name = "recording"

    def _build_head(self, output_size, with_confidence):
        self.built_in_inference_mode = torch.is_inference_mode_enabled()
        return SegmentationHead(self.spec.model, output_size, with_confidence)


def test_heads_are_built_outside_inference_mode_even_when_run_inside_it():
    model = build_model("mfaranet", 19, (4,)).eval()
    engine = _RecordingEngine(EngineSpec(SegmenterConfig(input_height=64, input_width=64), model, "x", 19))
    with torch.inference_mode():  # as Segmenter.segment calls engine.run
        labels, _ = engine.run(torch.zeros(1, 3, 64, 64), (64, 64), False)
    assert engine.built_in_inference_mode is False
    assert labels.dtype == torch.uint8


def test_cache_artifacts_are_written_under_their_own_suffix(tmp_path):
    seen = []

    def write(path):
        seen.append(path.name)
        path.write_bytes(b"engine")

    entry = ArtifactCache(tmp_path, "tensorrt").entry("slot", "engine.pt2", {"k": 1})
    entry.store(write)
    assert seen[0].endswith(".pt2"), "torch.export.save warns on (and will refuse) other names"
    assert entry.lookup() == tmp_path / "tensorrt" / "slot" / "engine.pt2"


def test_cache_key_covers_the_network_code():
    spec = EngineSpec(SegmenterConfig(), build_model("mfaranet", 19, (4,)), "weights", 19)
    key = spec.cache_key((512, 1024), False, gpu={"compute_capability": "8.7"})
    assert key["graph_source_sha256"] == graph_source_sha256() and len(key["graph_source_sha256"]) == 64
    assert graph_source_sha256(("engines/tensorrt_engine.py",)) != key["graph_source_sha256"]
    assert key["gpu"] == {"compute_capability": "8.7"}


def test_timing_cache_is_per_gpu_and_library_build(tmp_path):
    orin_nx = {"name": "Orin", "compute_capability": "8.7", "sm_count": 8}
    orin_agx = {"name": "Orin", "compute_capability": "8.7", "sm_count": 16}
    jetpack = {"cuda": "12.6", "tensorrt": "10.3.0"}
    desktop = {"cuda": "13.0", "tensorrt": "10.3.0"}
    paths = {timing_cache_path(tmp_path, gpu, versions)
             for gpu in (orin_nx, orin_agx) for versions in (jetpack, desktop)}
    assert len(paths) == 4
    assert all(path.parent == tmp_path / "tensorrt" / "timing_cache" for path in paths)


def test_dla_core_is_not_offered():
    # Removed: see docs/jetson.md (TensorRT 11.0-11.3 has no DLA; the networks' align_corners resizes
    # and grid_sample cannot run on a DLA, so every layer would fall back to the GPU anyway).
    with pytest.raises(TypeError, match="dla_core"):
        SegmenterConfig(dla_core=0)


def test_info_runtime_names_every_library_and_what_is_missing():
    import json

    from click.testing import CliRunner

    from rtseg_ros.cli.info import NOT_INSTALLED, info

    result = CliRunner().invoke(info, ["--runtime", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for name in ("torch", "cuda", "cudnn", "gpu", "tensorrt", "torch_tensorrt", "modelopt", "onnxruntime",
                 "openvino"):
        assert report[name], name
    assert report["torch"] == torch.__version__
    if importlib.util.find_spec("torch_tensorrt") is None:
        assert report["torch_tensorrt"] == NOT_INSTALLED
    if not torch.cuda.is_available():
        assert report["gpu"].startswith("none")
