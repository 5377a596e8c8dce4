"""The CPU report's tools: instruction-set facts, the thread default, OpenVINO's per-part profile (module
names kept through conversion), the AVX2 cap as the kernels show it, and the benchmark_app comparison.

Figures are not checked (a shared machine), only that each tool measures what it says on a small ATONet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rtseg_ros import machine
from rtseg_ros.engines import SegmenterConfig, set_cpu_threads
from rtseg_ros.io.frames import synthetic_frames

pytest.importorskip("openvino", reason="the profile reads OpenVINO's performance counters")
pytest.importorskip("nncf", reason="the int8 profile needs NNCF")

SMALL = (64, 128)
FRAME = (128, 256)


def test_isa_limits_and_the_busy_warning_read_what_they_are_given() -> None:
    assert machine.isa_limits({"ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/bin", "DNNL_MAX_CPU_ISA": ""}) == {
        "ONEDNN_MAX_CPU_ISA": "AVX2"}
    limits = machine.isa_limit_environment("avx2")
    assert limits["ONEDNN_MAX_CPU_ISA"] == "AVX2" and limits["ATEN_CPU_CAPABILITY"] == "avx2"
    with pytest.raises(ValueError, match="unknown instruction-set limit"):
        machine.isa_limit_environment("sse2")
    assert machine.busy_warning([1.9, 1.0, 1.0], 2) is None
    assert "not idle" in machine.busy_warning([4.5, 1.0, 1.0], 2)
    flags = machine.cpu_flags()
    names = machine.cpu_isa_extensions()
    assert ("AVX2" in names) == ("avx2" in flags) and ("AVX-512 VNNI" in names) == ("avx512_vnni" in flags)


def test_the_thread_default_leaves_one_core_to_the_middleware() -> None:
    assert [machine.default_cpu_threads(cores) for cores in (1, 2, 4, 16)] == [1, 1, 3, 15]
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(0) == machine.default_cpu_threads()
        assert set_cpu_threads(1) == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> str:
    from rtseg_ros.engines.calibration import write_synthetic_calibration_frames

    return str(write_synthetic_calibration_frames(tmp_path_factory.mktemp("calibration"), 4, FRAME))


def _segmenter(cache_dir, precision: str, calibration: str | None = None):
    from rtseg_ros.engines import Segmenter

    torch.manual_seed(0)
    return Segmenter(SegmenterConfig(model="atonet", input_height=SMALL[0], input_width=SMALL[1], backend="openvino",
                                     precision=precision, output_resolution="input", cache_dir=str(cache_dir),
                                     calibration_data=calibration, calibration_frames=4))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_converted_operations_carry_their_torch_module(cache_dir) -> None:
    engine = _segmenter(cache_dir, "fp32").engine
    model = engine.convert(FRAME, False)
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert convolutions and all(name.startswith("model.") for name in convolutions), convolutions
    assert convolutions[0].startswith("model.encoder.")
    assert any(name.startswith("model.classifier") for name in convolutions)
    assert tuple(model.inputs[0].get_partial_shape().to_shape()) == (1, 3, *SMALL)  # a static input
    assert any(op.get_friendly_name().startswith("head/") for op in model.get_ordered_ops())  # argmax


def test_the_profile_puts_every_layer_in_a_part(cache_dir) -> None:
    from rtseg_ros.benchmarks.openvino_profile import format_profile, profile_segmenter

    profile = profile_segmenter(_segmenter(cache_dir, "fp32"), synthetic_frames(*FRAME, 2), iters=2)
    parts = {row["part"]: row for row in profile["parts"]}
    assert {"encoder", "multi-level aggregation", "heads and score fusion", "final resize + argmax"} <= set(parts)
    assert parts["unattributed"]["ms"] < 0.05 * profile["layers_ms_total"] if "unattributed" in parts else True
    assert sum(row["share"] for row in profile["parts"]) == pytest.approx(1.0)
    assert profile["output_size"] == list(FRAME) and profile["precision"] == "fp32"
    assert set(parts["encoder"]["precision_ms"]) == {"fp32"}
    # Every encoder convolution ran in fp32 and is listed as such, with the kernel that ran it.
    assert parts["encoder"]["fp32_compute_layers"]
    assert all(layer["exec_type"] for layer in parts["encoder"]["fp32_compute_layers"])
    assert all(layer["part"] in parts for layer in profile["slowest_layers"])
    assert "| encoder |" in format_profile(profile)


def test_the_int8_profile_shows_the_encoder_in_int8(cache_dir, calibration) -> None:
    from rtseg_ros.benchmarks.openvino_profile import profile_segmenter

    profile = profile_segmenter(_segmenter(cache_dir, "int8", calibration), synthetic_frames(*FRAME, 2), iters=2)
    encoder = next(row for row in profile["parts"] if row["part"] == "encoder")
    assert encoder["precision_ms"].get("int8", 0.0) > 0.5 * encoder["ms"], encoder["precision_ms"]


@pytest.mark.skipif("avx512f" not in machine.cpu_flags(), reason="the cap shows only on a CPU with AVX-512")
def test_the_avx2_cap_reaches_openvinos_convolutions(cache_dir, tmp_path) -> None:
    script = (
        "import json, torch\n"
        "from rtseg_ros.engines import Segmenter, SegmenterConfig\n"
        "from rtseg_ros.io.frames import synthetic_frames\n"
        "from rtseg_ros.benchmarks.openvino_profile import profile_segmenter\n"
        "torch.manual_seed(0)\n"
        f"s = Segmenter(SegmenterConfig(model='atonet', input_height={SMALL[0]}, input_width={SMALL[1]}, "
        f"backend='openvino', output_resolution='input', cache_dir={str(tmp_path / 'cache')!r}))\n"
        f"p = profile_segmenter(s, synthetic_frames({FRAME[0]}, {FRAME[1]}, 1), iters=1)\n"
        "print(json.dumps({r['part']: r['isa_ms'] for r in p['parts']}))\n")
    env = {**os.environ, **machine.isa_limit_environment("avx2")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    isa = json.loads(result.stdout.strip().splitlines()[-1])
    assert "avx512" not in isa["encoder"] and isa["encoder"].get("avx2", 0) > 0, isa


def test_benchmark_app_runs_on_the_served_model(cache_dir) -> None:
    from rtseg_ros.benchmarks.openvino_profile import benchmark_app_comparison

    comparison = benchmark_app_comparison(_segmenter(cache_dir, "fp32"), synthetic_frames(*FRAME, 2), iters=2,
                                          seconds=1)
    assert comparison["benchmark_app_median_ms"] > 0 and comparison["ours_inference_ms_median"] > 0
    assert comparison["ours_over_benchmark_app"] == pytest.approx(
        comparison["ours_inference_ms_median"] / comparison["benchmark_app_median_ms"])
    assert "-shape [1,3,64,128]" in comparison["benchmark_app_command"]
    assert "-load_config" in comparison["benchmark_app_command"]


def test_the_profile_refuses_another_backend(cache_dir) -> None:
    from rtseg_ros.benchmarks.openvino_profile import profile_segmenter
    from rtseg_ros.engines import Segmenter

    segmenter = Segmenter(SegmenterConfig(model="atonet", input_height=SMALL[0], input_width=SMALL[1],
                                          backend="torch", cache_dir=str(cache_dir)))
    with pytest.raises(ValueError, match="OpenVINO's performance counters"):
        profile_segmenter(segmenter, synthetic_frames(*FRAME, 1))
