"""The node's parts in-process: statistics, parameters, camera info (the serving policies and the
overlay are tested without ROS in test_engines_serving.py and test_io_overlay.py)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the node's parts use ROS message types (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from rtseg_ros.engines import SegmenterConfig  # noqa: E402
from rtseg_ros.ros.diagnostics import FrameStatistics, diagnostic_status  # noqa: E402
from rtseg_ros.ros.parameters import (  # noqa: E402
    ENGINE_PARAMETERS,
    PARAMETERS,
    ParameterError,
    descriptor,
    validate_parameters,
)
from rtseg_ros.ros.segmentation_node import scale_camera_info  # noqa: E402

DEFAULTS = {name: spec.default for name, spec in PARAMETERS.items()}


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


@pytest.mark.parametrize("change,reason", [
    ({"input_width": "wide"}, r"input_width must be in \[32, 8192\]; got 'wide'"),
    ({"scales": "2"}, r"scales must be in \[1, 4\]"),
    ({"overlay_alpha": "half"}, r"overlay_alpha must be in \[0.0, 1.0\]"),
])
def test_values_of_the_wrong_type_are_rejected_with_a_reason(change: dict, reason: str) -> None:
    with pytest.raises(ParameterError, match=reason):
        validate_parameters({**DEFAULTS, **change})


def test_descriptors_carry_ranges_and_choices() -> None:
    width = descriptor("input_width")
    (width_range,) = width.integer_range
    assert (width_range.from_value, width_range.to_value, width_range.step) == (32, 8192, 32)
    assert "atonet" in descriptor("model").additional_constraints
    assert descriptor("qos_depth").read_only
    assert "each element in [1, 4]" in descriptor("scales").additional_constraints
    alpha = descriptor("overlay_alpha").floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    assert all(spec.description for spec in PARAMETERS.values())


def test_config_maps_back_to_the_engine_parameters() -> None:
    config = validate_parameters({**DEFAULTS, "scales": [2], "input_width": 512})
    values = config.to_parameters()
    assert set(values) == ENGINE_PARAMETERS
    assert validate_parameters({**DEFAULTS, **values}) == config


# Camera info ----------------------------------------------------------------------------


def test_camera_info_is_scaled_to_the_label_size() -> None:
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 400, 240, 0, 0, 1],
                      p=[500.0, 0, 320, 10, 0, 400, 240, 0, 0, 0, 1, 0], distortion_model="plumb_bob", d=[0.1] * 5)
    info.roi.x_offset, info.roi.width, info.roi.y_offset, info.roi.height = 64, 320, 48, 240
    header = Header(frame_id="camera")
    scaled = scale_camera_info(info, width=320, height=120, header=header)
    assert (scaled.width, scaled.height, scaled.header.frame_id) == (320, 120, "camera")
    # The labels cover the 320x240 ROI (REP 104: intrinsics are the full sensor's): shifted by the ROI's
    # offset, scaled by 320/320 and 120/240, and the result is a whole image of its own (empty ROI).
    assert list(scaled.k) == [500.0, 0, 256, 0, 200, 96, 0, 0, 1]
    assert list(scaled.p) == [500.0, 0, 256, 10, 0, 200, 96, 0, 0, 0, 1, 0]
    assert (scaled.roi.x_offset, scaled.roi.width, scaled.roi.y_offset, scaled.roi.height) == (0, 0, 0, 0)
    assert scaled.distortion_model == "plumb_bob" and list(scaled.d) == [0.1] * 5
    # The cached input is reused for later frames: it must stay as it was.
    assert (info.width, info.k[0], info.roi.x_offset, info.roi.width) == (640, 500.0, 64, 320)
    info.roi.x_offset = info.roi.y_offset = info.roi.width = info.roi.height = 0
    same = scale_camera_info(info, 640, 480, header)
    assert same is not info and list(same.k) == list(info.k) and list(same.p) == list(info.p)


def test_a_frame_wanting_confidence_is_never_served_by_a_labels_only_engine() -> None:
    from rtseg_ros.ros.segmentation_server import closest_variant

    labels_only = ((64, 128), False)
    with_confidence = ((96, 160), True)
    # Only labels built: a frame that wants confidence waits for eager PyTorch, one that does not is served.
    assert closest_variant({labels_only}, (72, 120), want_confidence=True) is None
    assert closest_variant({labels_only}, (72, 120), want_confidence=False) == labels_only
    # Its own labels+confidence build failed: labels alone rather than eager for ever.
    assert closest_variant({labels_only}, (72, 120), True, own_build_failed=True) == labels_only
    # A confidence engine of another size serves it (resized); a labels frame prefers labels, then size.
    assert closest_variant({labels_only, with_confidence}, (72, 120), True) == with_confidence
    assert closest_variant({labels_only, with_confidence}, (96, 160), False) == labels_only
    assert closest_variant({((96, 160), False), ((64, 128), False)}, (70, 130), False) == ((64, 128), False)
    assert closest_variant(set(), (72, 120), False) is None


def test_an_integer_given_for_a_number_parameter_is_taken_as_that_number() -> None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from rtseg_ros.ros.clients import ClientSession
    from rtseg_ros.ros.parameters import declare_parameters

    # What `-p batch_wait_ms:=5` hands the node: an INTEGER, which rclpy refuses for a DOUBLE parameter.
    with ClientSession() as session:
        node = Node("rtseg_parts_overrides", context=session.context,
                    parameter_overrides=[Parameter("batch_wait_ms", Parameter.Type.INTEGER, 5),
                                         Parameter("input_width", Parameter.Type.INTEGER, 256)])
        try:
            declare_parameters(node)
            assert node.get_parameter("batch_wait_ms").value == 5.0
            assert node.get_parameter("batch_wait_ms").type_ == Parameter.Type.DOUBLE
            assert node.get_parameter("input_width").value == 256
        finally:
            node.destroy_node()
