"""The node's /diagnostics status: levels a robot monitor can trust, and a hardware_id naming the device."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("diagnostic_msgs.msg", reason="the status is a diagnostic_msgs/DiagnosticStatus (pip install '.[ros]')")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from rtseg_ros.ros.diagnostics import FrameStatistics, StatisticsReport, device_name, diagnostic_status  # noqa: E402

ENGINE = {"model": "atonet", "device": "cpu", "input_size": "64x128"}


def _report(**fields) -> StatisticsReport:
    values = dict(period_s=1.0, input_rate_hz=10.0, output_rate_hz=10.0, latency_p50_ms=5.0, latency_p95_ms=9.0,
                  received=100, published=100, dropped=0, bad=0, failed=0, bad_in_period=0, failed_in_period=0,
                  published_in_period=10, since_last_frame_s=0.05)
    values.update(fields)
    return StatisticsReport(**values)


def _status(report: StatisticsReport, **kwargs) -> DiagnosticStatus:
    return diagnostic_status("/n: segmentation", report, ENGINE, "serving", "", image_timeout_s=2.0, **kwargs)


def test_ok_while_frames_flow_and_while_waiting_for_the_first() -> None:
    assert _status(_report()).level == DiagnosticStatus.OK
    waiting = _status(_report(received=0, published=0, published_in_period=0, since_last_frame_s=None))
    assert waiting.level == DiagnosticStatus.OK and waiting.message == "waiting for images"


def test_a_camera_that_stops_turns_the_status_to_warn() -> None:
    status = _status(_report(input_rate_hz=0.0, output_rate_hz=0.0, published_in_period=0, since_last_frame_s=7.5))
    assert status.level == DiagnosticStatus.WARN
    assert "no image for 7.5 s" in status.message
    assert dict((kv.key, kv.value) for kv in status.values)["since_last_frame_s"] == "7.5"


def test_inference_failures_raise_the_level() -> None:
    some = _status(_report(failed=3, failed_in_period=3, published_in_period=7))
    assert some.level == DiagnosticStatus.WARN and "inference failed on 3 frame(s)" in some.message
    every = _status(_report(failed=10, failed_in_period=10, published_in_period=0))
    assert every.level == DiagnosticStatus.ERROR and "inference failed on 10 frame(s)" in every.message


def test_statistics_count_failures_per_period_and_the_time_since_the_last_frame() -> None:
    statistics = FrameStatistics()
    assert statistics.report().since_last_frame_s is None
    statistics.frame_received(displaced_pending=False)
    statistics.frame_failed()
    report = statistics.report()
    assert (report.failed, report.failed_in_period, report.published_in_period) == (1, 1, 0)
    assert 0 <= report.since_last_frame_s < 5
    assert statistics.report().failed_in_period == 0  # a new period


def test_hardware_id_names_the_device() -> None:
    cpu = device_name("cpu")
    assert cpu.endswith("(cpu)") and cpu != "(cpu)" and len(cpu) > len(" (cpu)")
    assert _status(_report(), hardware_id=cpu).hardware_id == cpu
    assert _status(_report()).hardware_id == "cpu"  # no name given: the device setting
    assert device_name("npu") == "npu"
    assert not math.isnan(float(dict((kv.key, kv.value) for kv in _status(_report()).values)["latency_p50_ms"]))


@pytest.mark.parametrize("state", ["building engine", "rebuilding"])
def test_an_engine_build_in_progress_is_a_warning(state: str) -> None:
    status = diagnostic_status("/n: segmentation", _report(), ENGINE, state, "", image_timeout_s=2.0)
    assert status.level == DiagnosticStatus.WARN
    assert "building engine" in status.message
    assert dict((kv.key, kv.value) for kv in status.values)["engine_state"] == state
