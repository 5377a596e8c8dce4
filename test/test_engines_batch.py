"""Batched inference (``Segmenter.segment_batch``): a batch never changes a result, on every CPU backend.

Frames of different sizes and colour orders are batched together and compared with ``segment`` on
the same frames one at a time. Labels must be equal and confidence within 1e-5, except at pixels
where the two best classes are a float near-tie: the batched network (a convolution over B images)
and the one-frame graph (network, resize and argmax fused) round differently at the 1e-7 level, so
an argmax whose two best logits lie within 1e-4 may flip. Such pixels are excluded,
and the excluded share is asserted to be tiny (< 1e-3).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import BatchFrame, BatchFrameError, ConfigError, Segmenter, SegmenterConfig
from rtseg_ros.engines.preprocessing import frame_to_device

NETWORK = (64, 128)
TIE_GAP = 1e-4  # top-2 logit gap below which an argmax may flip with rounding
MAX_TIED_SHARE = 1e-3


def _frames() -> list[BatchFrame]:
    """Four frames, three sizes, both colour orders (more than max_batch=3: two chunks)."""
    big = make_scene(21, 120, 200)[0]
    small = make_scene(22, 48, 96)[0]
    odd = make_scene(23, 75, 131)[0]
    return [BatchFrame(big), BatchFrame(np.ascontiguousarray(small[..., ::-1]), "bgr"), BatchFrame(odd),
            BatchFrame(torch.from_numpy(big.copy()), "rgb", output_size=(33, 65))]


def _settings(reference_dir, tmp_path, **fields) -> SegmenterConfig:
    return SegmenterConfig(model="atonet", weights=str(reference_dir / "atonet_official_random_fp16.pt"),
                           input_height=NETWORK[0], input_width=NETWORK[1], cache_dir=str(tmp_path), max_batch=3,
                           **fields)


@pytest.fixture(scope="module")
def eager(reference_dir, tmp_path_factory) -> Segmenter:
    """The eager torch Segmenter: the reference for each backend, and the judge of near-ties."""
    return Segmenter(_settings(reference_dir, tmp_path_factory.mktemp("eager")))


def _tie_mask(eager: Segmenter, frame: BatchFrame, size: tuple[int, int]) -> np.ndarray:
    """Pixels whose two best logits lie within ``TIE_GAP`` of each other."""
    with torch.inference_mode():
        image = eager._preprocess(frame_to_device(frame.pixels, eager.device), frame.color_order)
        top2 = eager.engine.model(image, output_size=size).float()[0].topk(2, dim=0).values
    return (top2[0] - top2[1] < TIE_GAP).numpy()


def _assert_same_labels(eager: Segmenter, frame: BatchFrame, got: np.ndarray, expected: np.ndarray) -> None:
    """Labels equal wherever the two best logits are not a near-tie, and near-ties rare."""
    tied = _tie_mask(eager, frame, got.shape)
    assert tied.mean() < MAX_TIED_SHARE, f"{tied.mean():.2e} of the pixels are near-ties"
    differ = got != expected
    assert not (differ & ~tied).any(), f"labels differ at {int((differ & ~tied).sum())} pixels that are no tie"


def _assert_batch_equals_one_at_a_time(segmenter: Segmenter, eager: Segmenter, frames: list[BatchFrame],
                                       confidence_atol: float = 1e-5) -> None:
    batched = segmenter.segment_batch(frames, want_confidence=True)
    assert len(batched) == len(frames)
    for index, (frame, result) in enumerate(zip(frames, batched)):
        single = segmenter.segment(frame.pixels, frame.color_order, want_confidence=True,
                                   output_size=frame.output_size)
        assert result.labels.shape == single.labels.shape == result.confidence.shape, index
        expected_shape = frame.output_size or segmenter.output_size(tuple(frame.pixels.shape[:2]))
        assert result.labels.shape == tuple(expected_shape)
        assert result.labels.dtype == np.uint8 and result.confidence.dtype == np.float32
        _assert_same_labels(eager, frame, result.labels, single.labels)
        np.testing.assert_allclose(result.confidence, single.confidence, atol=confidence_atol, rtol=0)
        assert len(np.unique(result.labels)) > 1  # a real segmentation, not a constant image
    sizes = [r.timings_ms["batch_size"] for r in batched]
    assert sizes == [3.0, 3.0, 3.0, 1.0]  # four frames, max_batch=3: a batch of three, then one
    assert all(set(r.timings_ms) == {"preprocess", "inference", "postprocess", "total", "batch_size"}
               for r in batched)


def test_torch_batch_equals_one_at_a_time(eager):
    _assert_batch_equals_one_at_a_time(eager, eager, _frames())
    _assert_pipelined_batches_equal_segment_batch(eager, _frames())
    assert eager.max_batch == 3 and eager.batch_prepared  # eager builds nothing


def test_labels_without_confidence_and_an_empty_batch(eager):
    frames = _frames()[:2]
    results = eager.segment_batch(frames)
    assert all(r.confidence is None for r in results)
    for frame, result in zip(frames, results):
        _assert_same_labels(eager, frame, result.labels, eager.segment(frame.pixels, frame.color_order).labels)
    assert eager.segment_batch([]) == []


@pytest.mark.parametrize(("bad", "color_order", "message"), [
    (np.zeros((8, 8, 3), np.float32), "rgb", "uint8"),
    (np.zeros((8, 8), np.uint8), "rgb", "HxWx3"),
    (np.zeros((8, 8, 3), np.uint8), "yuv", "color_order"),
])
def test_a_bad_frame_names_its_index_and_nothing_runs(eager, bad, color_order, message):
    frames = _frames()[:2]
    with pytest.raises(BatchFrameError, match=message) as info:
        eager.segment_batch([frames[0], BatchFrame(bad, color_order), frames[1]])
    assert info.value.index == 1 and "frame 1 of the batch" in str(info.value)
    # The caller drops it and the others are served.
    assert [r.labels.shape for r in eager.segment_batch(frames)] == [(120, 200), (48, 96)]


def test_max_batch_is_validated_and_not_a_node_parameter():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="max_batch"):
            SegmenterConfig(max_batch=bad).validate()
    config = SegmenterConfig(max_batch=4)
    assert "max_batch" not in config.to_parameters()
    assert SegmenterConfig.from_parameters(config.to_parameters()).max_batch == 1


def test_the_batched_engine_key_holds_max_batch(eager):
    spec = eager.engine.spec
    assert spec.batch_cache_key()["max_batch"] == 3 and "batch1to3" in spec.batch_cache_name()
    other = dataclasses.replace(spec, config=dataclasses.replace(spec.config, max_batch=4))
    assert other.batch_cache_key() != spec.batch_cache_key() and other.batch_cache_name() != spec.batch_cache_name()


@pytest.mark.slow
def test_compile_batch_equals_one_at_a_time(reference_dir, tmp_path, eager):
    # Labels at the network size keep inductor to one head and one finish (plus batch 1 and batch 2-3).
    segmenter = Segmenter(_settings(reference_dir, tmp_path, backend="compile", output_resolution="network"))
    segmenter.prepare_batch()
    assert segmenter.batch_prepared and segmenter.is_batch_prepared([NETWORK], False)
    frames = [dataclasses.replace(f, output_size=None) for f in _frames()]
    _assert_batch_equals_one_at_a_time(segmenter, eager, frames)
    segmenter.segment_batch(frames[:2])  # batch 2 reuses the batch-dynamic graph of batch 3


def test_onnxruntime_batch_equals_one_at_a_time(reference_dir, tmp_path, eager):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    segmenter = Segmenter(_settings(reference_dir, tmp_path, backend="onnxruntime"))
    frames = _frames()
    assert not segmenter.batch_prepared
    segmenter.prepare_batch([(120, 200), (48, 96), (75, 131), (33, 65)], with_confidence=True)
    assert segmenter.batch_prepared and segmenter.is_batch_prepared([(48, 96)], True)
    _assert_batch_equals_one_at_a_time(segmenter, eager, frames)
    bodies = sorted((tmp_path / "onnx").glob("*batch1to3*/model.onnx"))
    assert len(bodies) == 1  # one export serves every batch size
    _assert_pipelined_batches_equal_segment_batch(segmenter, frames)


def _assert_pipelined_batches_equal_segment_batch(segmenter: Segmenter, frames: list[BatchFrame]) -> None:
    """Two batches started before either finishes (the node's two stages) give segment_batch's results."""
    first, second = frames[:3], frames[3:]
    expected = segmenter.segment_batch(first, want_confidence=True) + segmenter.segment_batch(second, True)
    in_flight = [segmenter.start_batch(first, True), segmenter.start_batch(second, True)]
    results = [result for batch in in_flight for result in batch.finish()]
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        assert got.timings_ms["batch_size"] == want.timings_ms["batch_size"]
    with pytest.raises(ValueError, match="max_batch"):
        segmenter.start_batch(frames)  # four frames, max_batch=3: segment_batch chunks, start_batch does not


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8", marks=pytest.mark.slow)])
def test_openvino_batch_equals_one_at_a_time(reference_dir, tmp_path, eager, precision):
    pytest.importorskip("openvino")
    calibration = {}
    if precision == "int8":
        pytest.importorskip("nncf")
        from rtseg_ros.engines.calibration import write_synthetic_calibration_frames

        calibration = {"calibration_data": str(write_synthetic_calibration_frames(tmp_path / "frames", 4, NETWORK)),
                       "calibration_frames": 4}
    segmenter = Segmenter(_settings(reference_dir, tmp_path, backend="openvino", precision=precision, **calibration))
    # int8: the batched network and the one-frame head are two models quantized apart (both leave the
    # final resize and argmax in float). Labels stay equal; confidence may move by a few 1e-3.
    _assert_batch_equals_one_at_a_time(segmenter, eager, _frames(), 1e-5 if precision == "fp32" else 1e-2)
    assert len(sorted((tmp_path / "openvino").glob("*batch1to3*/model.blob"))) == 1
