"""The node's parts in-process: worker and swap policies, statistics, parameters, camera info, overlay."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the node's parts use ROS message types (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from rtseg_ros.datasets.labels import CAMVID, CITYSCAPES  # noqa: E402
from rtseg_ros.engines import SegmenterConfig  # noqa: E402
from rtseg_ros.ros.diagnostics import FrameStatistics, diagnostic_status  # noqa: E402
from rtseg_ros.ros.inference_worker import EngineState, EngineSwapper, LatestFrameWorker  # noqa: E402
from rtseg_ros.ros.overlay import overlay_labels  # noqa: E402
from rtseg_ros.ros.parameters import (  # noqa: E402
    ENGINE_PARAMETERS,
    PARAMETERS,
    ParameterError,
    validate_parameters,
)
from rtseg_ros.ros.segmentation_node import _config_parameters, scale_camera_info  # noqa: E402

DEFAULTS = {name: spec.default for name, spec in PARAMETERS.items()}


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# Latest-frame worker ------------------------------------------------------------------------


def test_worker_handles_only_the_newest_pending_item() -> None:
    started, release = threading.Event(), threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            started.set()
            release.wait(5)
        handled.append(item)

    worker = LatestFrameWorker(handle)
    try:
        assert worker.submit(0) is False
        assert started.wait(5)  # item 0 is in hand, blocked
        displaced = [worker.submit(i) for i in range(1, 6)]
        assert displaced == [False, True, True, True, True]
        release.set()
        _wait(lambda: len(handled) == 2)
        time.sleep(0.05)
        assert handled == [0, 5]
    finally:
        worker.stop()


def test_worker_survives_a_failing_handler() -> None:
    failed = threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            failed.set()
            raise RuntimeError("boom")
        handled.append(item)

    worker = LatestFrameWorker(handle)
    try:
        worker.submit(1)
        assert failed.wait(5)
        worker.submit(2)
        _wait(lambda: handled == [2])
    finally:
        worker.stop()


# Engine swap --------------------------------------------------------------------------------


def test_old_engine_serves_until_the_new_one_is_built() -> None:
    gate = threading.Event()
    swapped: list[str] = []

    def build(config: str) -> str:
        if config == "slow":
            gate.wait(5)
        return f"engine:{config}"

    swapper = EngineSwapper(build, "first", on_swap=swapped.append)
    assert swapper.rebuild("slow") is True
    assert swapper.state == EngineState.REBUILDING and swapper.engine == "engine:first"
    gate.set()
    swapper.wait_idle(5)
    assert (swapper.engine, swapper.config, swapper.state, swapped) == ("engine:slow", "slow", "serving", ["slow"])
    assert swapper.rebuild("slow") is False  # already serving


def test_a_failed_rebuild_keeps_the_old_engine() -> None:
    failures: list[tuple[str, str]] = []

    def build(config: str) -> str:
        if config == "bad":
            raise ValueError("no such weights")
        return f"engine:{config}"

    swapper = EngineSwapper(build, "good", on_failure=lambda config, error: failures.append((config, str(error))))
    swapper.rebuild("bad")
    swapper.wait_idle(5)
    assert swapper.engine == "engine:good" and swapper.state == EngineState.REBUILD_FAILED
    assert swapper.last_error == "no such weights" and failures == [("bad", "no such weights")]


def test_only_the_latest_of_overlapping_rebuilds_is_swapped_in() -> None:
    gates = {"a": threading.Event(), "b": threading.Event()}

    def build(config: str) -> str:
        if config in gates:
            gates[config].wait(5)
        return config

    swapper = EngineSwapper(build, "start")
    swapper.rebuild("a")
    swapper.rebuild("b")
    gates["b"].set()
    _wait(lambda: swapper.engine == "b")
    gates["a"].set()  # finishes last, but was superseded
    swapper.wait_idle(5)
    assert swapper.engine == "b" and swapper.config == "b"


def test_start_up_errors_reach_the_caller() -> None:
    def build(config: str) -> str:
        raise FileNotFoundError(config)

    with pytest.raises(FileNotFoundError):
        EngineSwapper(build, "missing.pth")


# Statistics ---------------------------------------------------------------------------------


def test_statistics_report_rates_latency_and_totals() -> None:
    stats = FrameStatistics()
    for displaced in (False, True, True, False):
        stats.frame_received(displaced)
    stats.frame_bad()
    for latency in (0.010, 0.020, 0.030):
        stats.frame_published(latency)
    report = stats.report()
    assert (report.received, report.dropped, report.bad, report.published) == (4, 2, 1, 3)
    assert report.latency_p50_ms == pytest.approx(20.0)
    assert report.input_rate_hz > 0 and report.output_rate_hz > 0
    later = stats.report()
    assert later.received == 4 and later.bad_in_period == 0 and np.isnan(later.latency_p50_ms)


def test_diagnostic_status_warns_on_bad_frames_and_failed_rebuilds() -> None:
    stats = FrameStatistics()
    stats.frame_received(False)
    engine = {"model": "atonet", "device": "cpu"}
    ok = diagnostic_status("node: segmentation", stats.report(), engine, "serving", "")
    assert ok.level == DiagnosticStatus.OK and ok.hardware_id == "cpu"
    stats.frame_bad()
    warn = diagnostic_status("node: segmentation", stats.report(), engine, "rebuild failed", "weights missing")
    assert warn.level == DiagnosticStatus.WARN
    assert "1 bad frame" in warn.message and "weights missing" in warn.message
    values = {kv.key: kv.value for kv in warn.values}
    assert values["frames_bad"] == "1" and values["model"] == "atonet" and values["engine_state"] == "rebuild failed"


# Parameters ---------------------------------------------------------------------------------


def test_defaults_validate_into_a_segmenter_config() -> None:
    config = validate_parameters(DEFAULTS)
    assert isinstance(config, SegmenterConfig)
    assert (config.model, config.weights, config.input_height, config.input_width) == ("mfaranet", None, 512, 1024)
    assert config.scales == (1, 2, 3, 4) and config.cache_dir is None


@pytest.mark.parametrize("change,reason", [
    ({"model": "unet"}, "model must be one of mfaranet, atonet"),
    ({"confidence_encoding": "16UC1"}, "confidence_encoding must be one of"),
    ({"scales": [0]}, r"scales must be in \[1, 4\]"),
    ({"scales": [2, 2]}, "scales must not repeat"),
    ({"overlay_alpha": 1.5}, r"overlay_alpha must be in \[0.0, 1.0\]"),
    ({"weights": "/no/such/file.pth"}, "weights file not found: /no/such/file.pth"),
    ({"weights": "no_such_entry"}, "neither an existing file nor a manifest entry"),
    ({"input_width": 100}, "divisible by 32"),
    ({"model": "atonet", "scales": [2]}, "atonet has none"),
    ({"backend": "tensorrt"}, "needs CUDA"),
    ({"precision": "fp16"}, "fp16 is not supported on cpu"),
])
def test_invalid_parameters_are_rejected_with_a_reason(change: dict, reason: str) -> None:
    with pytest.raises(ParameterError, match=reason):
        validate_parameters({**DEFAULTS, **change})


def test_descriptors_carry_ranges_and_choices() -> None:
    width = PARAMETERS["input_width"].descriptor("input_width")
    (width_range,) = width.integer_range
    assert (width_range.from_value, width_range.to_value, width_range.step) == (32, 8192, 32)
    assert "atonet" in PARAMETERS["model"].descriptor("model").additional_constraints
    assert PARAMETERS["qos_depth"].descriptor("qos_depth").read_only
    alpha = PARAMETERS["overlay_alpha"].descriptor("overlay_alpha").floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    assert all(spec.description for spec in PARAMETERS.values())


def test_config_maps_back_to_the_engine_parameters() -> None:
    config = validate_parameters({**DEFAULTS, "scales": [2], "input_width": 512})
    values = _config_parameters(config)
    assert set(values) == ENGINE_PARAMETERS
    assert validate_parameters({**DEFAULTS, **values}) == config


# Camera info and overlay --------------------------------------------------------------------


def test_camera_info_is_scaled_to_the_label_size() -> None:
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 400, 240, 0, 0, 1],
                      p=[500.0, 0, 320, 10, 0, 400, 240, 0, 0, 0, 1, 0], distortion_model="plumb_bob", d=[0.1] * 5)
    info.roi.x_offset, info.roi.width, info.roi.y_offset, info.roi.height = 64, 320, 48, 240
    header = Header(frame_id="camera")
    scaled = scale_camera_info(info, width=320, height=120, header=header)
    assert (scaled.width, scaled.height, scaled.header.frame_id) == (320, 120, "camera")
    assert list(scaled.k) == [250.0, 0, 160, 0, 100, 60, 0, 0, 1]
    assert list(scaled.p) == [250.0, 0, 160, 5, 0, 100, 60, 0, 0, 0, 1, 0]
    assert (scaled.roi.x_offset, scaled.roi.width, scaled.roi.y_offset, scaled.roi.height) == (32, 160, 12, 60)
    assert scaled.distortion_model == "plumb_bob" and list(scaled.d) == [0.1] * 5
    # The cached input is reused for later frames: it must stay as it was.
    assert (info.width, info.k[0], info.roi.x_offset, info.roi.width) == (640, 500.0, 64, 320)
    same = scale_camera_info(info, 640, 480, header)
    assert same is not info and list(same.k) == list(info.k) and same.roi.width == 320


def test_overlay_blends_palette_colours_over_the_frame() -> None:
    frame = np.zeros((8, 12, 3), np.uint8)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 2
    overlay = overlay_labels(frame, "rgb", labels, CITYSCAPES, alpha=1.0)
    assert overlay.shape == (4, 6, 3)
    np.testing.assert_array_equal(overlay[0, 0], CITYSCAPES.colors[0])
    np.testing.assert_array_equal(overlay[0, 5], CITYSCAPES.colors[2])
    white_bgr = np.full((4, 6, 3), (255, 0, 0), np.uint8)  # blue in BGR
    half = overlay_labels(white_bgr, "bgr", np.zeros((4, 6), np.uint8), CAMVID, alpha=0.5)
    np.testing.assert_allclose(half[0, 0], (np.array(CAMVID.colors[0]) + [0, 0, 255]) / 2, atol=1)
    with pytest.raises(ValueError, match="color_order"):
        overlay_labels(frame, "hsv", labels, CITYSCAPES)
