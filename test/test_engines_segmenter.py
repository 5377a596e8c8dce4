"""Segmenter on the eager torch backend: outputs, frame handling, and parity with the authors' pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import FrameError, Segmenter, SegmenterConfig
from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device, reference_preprocess

NETWORK = (64, 128)


@pytest.fixture(scope="module")
def mfaranet_weights(reference_dir):
    return str(reference_dir / "mfaranet_official_random_fp16.pt")


@pytest.fixture(scope="module")
def segmenter(mfaranet_weights, tmp_path_factory):
    return Segmenter(SegmenterConfig(model="mfaranet", weights=mfaranet_weights, input_height=NETWORK[0],
                                     input_width=NETWORK[1], cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def network_segmenter(mfaranet_weights, tmp_path_factory):
    return Segmenter(SegmenterConfig(model="mfaranet", weights=mfaranet_weights, input_height=NETWORK[0],
                                     input_width=NETWORK[1], output_resolution="network",
                                     cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def frame():
    return make_scene(3, 90, 170)[0]


def test_labels_at_frame_resolution(segmenter, frame):
    result = segmenter.segment(frame)
    assert result.labels.shape == frame.shape[:2]
    assert result.labels.dtype == np.uint8
    assert result.labels.max() < segmenter.num_classes
    assert len(np.unique(result.labels)) > 1
    assert result.confidence is None
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess", "total"}
    assert all(v >= 0 for v in result.timings_ms.values())


def test_labels_at_network_resolution(network_segmenter, frame):
    result = network_segmenter.segment(frame, want_confidence=True)
    assert result.labels.shape == NETWORK
    assert result.confidence.shape == NETWORK


def test_confidence_is_the_max_softmax_probability(segmenter, frame):
    result = segmenter.segment(frame, want_confidence=True)
    confidence = result.confidence
    assert confidence.dtype == np.float32 and confidence.shape == frame.shape[:2]
    assert confidence.min() >= 1.0 / segmenter.num_classes - 1e-6 and confidence.max() <= 1.0
    image = torch.from_numpy(reference_preprocess(frame, NETWORK))
    with torch.inference_mode():
        logits = segmenter.engine.model(image, output_size=frame.shape[:2])
    expected = torch.softmax(logits, dim=1).amax(dim=1)[0].numpy()
    np.testing.assert_allclose(confidence, expected, atol=1e-4)
    # The labels do not change when confidence is asked for.
    np.testing.assert_array_equal(result.labels, segmenter.segment(frame).labels)


def test_bgr_frames_give_the_same_labels(segmenter, frame):
    rgb = segmenter.segment(frame, color_order="rgb").labels
    bgr_frame = np.ascontiguousarray(frame[..., ::-1])
    np.testing.assert_array_equal(segmenter.segment(bgr_frame, color_order="bgr").labels, rgb)


def test_numpy_tensor_and_readonly_frames_agree(segmenter, frame):
    expected = segmenter.segment(frame).labels
    np.testing.assert_array_equal(segmenter.segment(torch.from_numpy(frame.copy())).labels, expected)
    readonly = np.frombuffer(frame.tobytes(), dtype=np.uint8).reshape(frame.shape)
    assert not readonly.flags.writeable
    np.testing.assert_array_equal(segmenter.segment(readonly).labels, expected)
    # A reversed view (negative strides) is accepted too.
    np.testing.assert_array_equal(segmenter.segment(frame[..., ::-1], color_order="bgr").labels, expected)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (97, 203)])
def test_odd_frame_sizes(segmenter, size):
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    result = segmenter.segment(frame, want_confidence=True)
    assert result.labels.shape == size and result.confidence.shape == size


@pytest.mark.parametrize(
    ("bad", "color_order", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "rgb", "uint8"),
        (np.zeros((8, 8), np.uint8), "rgb", "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), "rgb", "HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), "rgb", "empty"),
        (np.zeros((8, 8, 3), np.uint8), "yuv", "color_order"),
        ([[1, 2, 3]], "rgb", "numpy array or a torch tensor"),
    ],
)
def test_bad_frames_fail_clearly_and_the_segmenter_keeps_working(segmenter, frame, bad, color_order, message):
    with pytest.raises(FrameError, match=message):
        segmenter.segment(bad, color_order=color_order)
    assert segmenter.segment(frame).labels.shape == frame.shape[:2]


@pytest.mark.parametrize("size", [(256, 512), (64, 128), (37, 70), (200, 300)])
@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
def test_preprocessing_matches_the_authors_host_pipeline(size, color_order):
    frame = make_scene(5, *size)[0]
    preprocess = Preprocessor(NETWORK, torch.device("cpu"), channels_last=True)
    given = frame if color_order == "rgb" else np.ascontiguousarray(frame[..., ::-1])
    with torch.inference_mode():
        ours = preprocess(frame_to_device(given, torch.device("cpu")), color_order)
    assert ours.shape == (1, 3, *NETWORK) and ours.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(ours.numpy(), reference_preprocess(frame, NETWORK), atol=1e-4)


def test_labels_match_the_authors_pipeline(network_segmenter, segmenter):
    frame = make_scene(7, 128, 256)[0]
    image = torch.from_numpy(reference_preprocess(frame, NETWORK))
    model = network_segmenter.engine.model
    with torch.inference_mode():
        logits = model(image)
        authors_network = logits.argmax(1)[0].numpy()
        # The authors resize network-size logits to the frame; ours makes one resize from the
        # network's stride-4 logits, so a few boundary pixels may differ.
        authors_frame = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=True)
        authors_frame = authors_frame.argmax(1)[0].numpy()
    assert (network_segmenter.segment(frame).labels == authors_network).mean() > 0.999
    assert (segmenter.segment(frame).labels == authors_frame).mean() > 0.99


def test_torch_engine_reproduces_the_official_output(segmenter, reference_dir):
    image = torch.load(reference_dir / "parity_input.pt")
    official = torch.load(reference_dir / "mfaranet_official_out.pt")["logits"].argmax(1)[0]
    labels, confidence = segmenter.engine.run(image.contiguous(memory_format=torch.channels_last),
                                              tuple(image.shape[-2:]), with_confidence=False)
    assert confidence is None
    assert (labels == official.to(torch.uint8)).float().mean().item() > 0.999


def test_atonet_and_random_weights_warn(tmp_path, caplog, frame):
    with caplog.at_level("WARNING", logger="rtseg_ros.engines.segmenter"):
        segmenter = Segmenter(SegmenterConfig(model="atonet", input_height=64, input_width=96,
                                              cache_dir=str(tmp_path)))
    assert "NO WEIGHTS" in caplog.text
    segmenter.warmup(frame.shape[:2])
    result = segmenter.segment(frame, color_order="bgr", want_confidence=True)
    assert result.labels.shape == frame.shape[:2] and result.labels.max() < 19


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_labels_by_reductions_are_the_argmax(dtype):
    from rtseg_ros.engines.preprocessing import labels_and_confidence

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 19, 24, 40, generator=generator).to(dtype)
    # Ties: rounded scores make many pixels have two or more best classes; the first one must win.
    logits = (logits * 2).round() / 2
    logits[0, :, 0, 0] = 1.0  # all classes equal: class 0
    channels_last = logits.contiguous(memory_format=torch.channels_last)
    for want_confidence in (False, True):
        expected, expected_confidence = labels_and_confidence(logits, want_confidence)
        for tensor in (logits, channels_last):
            labels, confidence = labels_and_confidence(tensor, want_confidence, labels_by_reductions=True)
            assert labels.dtype == torch.uint8 and labels.shape == (24, 40)
            assert torch.equal(labels, expected)
            assert torch.equal(labels, logits[0].float().argmax(dim=0).to(torch.uint8))
            if want_confidence:
                assert confidence.dtype == torch.float32
                torch.testing.assert_close(confidence, expected_confidence)
    assert labels[0, 0] == 0
