"""OpenVINO backend: agreement with torch, its compiled-model cache, int8 calibration, and its error messages.

Conversions take seconds each on two cores, so every cache test shares one small ATONet engine; the
agreement tests run both networks at the two sizes the issue names.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig, check_runtime
from rtseg_ros.engines.config import resolve_backend

SMALL = (64, 128)  # network size of the cache and int8 tests: conversion time barely depends on it


def _weights(reference_dir, model: str) -> str:
    return str(reference_dir / f"{model}_official_random_fp16.pt")


def _config(model: str, size: tuple[int, int], cache_dir, backend: str = "openvino", **fields) -> SegmenterConfig:
    return SegmenterConfig(model=model, input_height=size[0], input_width=size[1], backend=backend,
                           output_resolution="network", cache_dir=str(cache_dir), **fields)


@contextlib.contextmanager
def _logs(caplog, *names: str):
    """Capture INFO records of the named loggers.

    The handler goes on each logger itself: with launch_testing's pytest plugin loaded, loggers
    created after it do not propagate to caplog's root handler.
    """
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.propagate = False  # each record once, whether or not the plugin is loaded
        logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)
            logger.propagate = propagate


ENGINE_LOGS = ("rtseg_ros.engines.cache", "rtseg_ros.engines.openvino_engine")


def _hide_modules(monkeypatch, *hidden: str) -> None:
    """Make ``importlib.util.find_spec`` report ``hidden`` as not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in hidden:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# --------------------------------------------------------------------------- errors (no OpenVINO needed)

def test_a_missing_openvino_install_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path):
    _hide_modules(monkeypatch, "openvino")
    config = _config("atonet", SMALL, tmp_path)
    config.validate()  # the settings are fine; this machine lacks the library
    for attempt in (lambda: check_runtime(config), lambda: Segmenter(config)):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message
        assert "openvino" in message and "pip install 'rtseg_ros[openvino]'" in message


def test_int8_without_nncf_names_nncf_and_the_extra(monkeypatch, tmp_path):
    _hide_modules(monkeypatch, "nncf")
    config = _config("atonet", SMALL, tmp_path, precision="int8", calibration_data=str(tmp_path))
    with pytest.raises(ConfigError, match=r"needs nncf, which is not installed; pip install 'rtseg_ros\[openvino\]'"):
        check_runtime(config)


@pytest.mark.parametrize(("settings", "reason"), [
    ({"device": "gpu"}, "only the openvino backend runs"),
    ({"device": "npu", "backend": "onnxruntime"}, "only the openvino backend runs"),
    ({"backend": "openvino", "device": "cuda"}, "openvino backend runs on cpu or an Intel gpu/npu"),
    ({"backend": "openvino", "precision": "fp16"}, "fp16 is not supported on cpu"),
    ({"backend": "openvino", "precision": "int8"}, "int8 needs calibration_data"),
    ({"backend": "onnxruntime", "precision": "int8", "calibration_data": "x"}, "or the openvino backend"),
    ({"backend": "openvino", "device": "gpu:0"}, "unknown device"),
])
def test_openvino_settings_are_validated(settings, reason):
    with pytest.raises(ConfigError, match=reason):
        SegmenterConfig(**settings).validate()


def test_valid_openvino_settings():
    SegmenterConfig(backend="openvino").validate()
    SegmenterConfig(backend="openvino", precision="int8", calibration_data="frames/").validate()
    SegmenterConfig(backend="openvino", device="GPU.1", precision="fp16").validate()
    SegmenterConfig(backend="openvino", device="npu", precision="int8", calibration_data="frames/").validate()
    assert SegmenterConfig(backend="openvino", device="gpu").torch_device == "cpu"


def test_auto_takes_the_first_installed_backend_and_logs_the_fallback(monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    config = SegmenterConfig(backend="auto")
    config.validate()
    with _logs(caplog, "rtseg_ros.engines.config"):
        assert resolve_backend(config).backend == "openvino"
    assert "backend auto: using openvino" in caplog.text
    caplog.clear()
    _hide_modules(monkeypatch, "openvino")
    with _logs(caplog, "rtseg_ros.engines.config"):
        assert resolve_backend(config).backend == "onnxruntime"
    fallbacks = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
    assert "falling back to onnxruntime; skipped openvino (the openvino backend needs openvino" in caplog.text
    # int8 on a CPU: only openvino takes it, so there is nothing to fall back to.
    with pytest.raises(ConfigError, match="backend auto: no backend can run"):
        resolve_backend(SegmenterConfig(backend="auto", precision="int8", calibration_data="."))


# --------------------------------------------------------------------------- with OpenVINO

openvino_only = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                   reason="the openvino backend needs OpenVINO (pip install 'rtseg_ros[openvino]')")


@openvino_only
def test_an_absent_intel_device_is_refused_with_the_reason(tmp_path):
    import openvino

    if any(d.startswith("GPU") for d in openvino.Core().available_devices):
        pytest.skip("this machine has an Intel GPU")
    with pytest.raises(ConfigError, match="OpenVINO device GPU is not present .*sees CPU.*compute runtime"):
        Segmenter(_config("atonet", SMALL, tmp_path, device="gpu"))


@openvino_only
@pytest.mark.parametrize("size", [(256, 512), (480, 640)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("model", ["mfaranet", "atonet"])
def test_openvino_fp32_labels_agree_with_torch(model, size, reference_dir, tmp_path):
    weights = _weights(reference_dir, model)
    frame = make_scene(7, *size)[0]
    results = {}
    for backend in ("torch", "openvino"):
        segmenter = Segmenter(_config(model, size, tmp_path, backend, weights=weights))
        results[backend] = segmenter.segment(frame, want_confidence=True)
    labels_ov, labels_torch = results["openvino"].labels, results["torch"].labels
    assert labels_ov.shape == labels_torch.shape == size and labels_ov.dtype == np.uint8
    assert (labels_ov == labels_torch).mean() > 0.999
    np.testing.assert_allclose(results["openvino"].confidence, results["torch"].confidence, atol=1e-3)


@pytest.fixture(scope="module")
def small_cache(reference_dir, tmp_path_factory):
    """A cache holding one ATONet fp32 engine at SMALL (labels only), and the settings that made it."""
    cache_dir = tmp_path_factory.mktemp("openvino-cache")
    config = _config("atonet", SMALL, cache_dir, weights=_weights(reference_dir, "atonet"))
    Segmenter(config).warmup()
    return cache_dir, config


def _entry_dir(cache_dir):
    (entry,) = [p for p in (cache_dir / "openvino").iterdir() if p.is_dir()]
    return entry


def _copy(small_cache, tmp_path):
    cache_dir, config = small_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    return copy, dataclasses.replace(config, cache_dir=str(copy))


@openvino_only
def test_the_compiled_model_is_cached_with_version_and_device_in_its_key(small_cache, caplog):
    cache_dir, config = small_cache
    meta = json.loads((_entry_dir(cache_dir) / "meta.json").read_text())
    import openvino

    assert meta["key"]["openvino"] == openvino.__version__
    assert meta["key"]["device"] == "CPU" and meta["key"]["device_name"]
    assert meta["key"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    with _logs(caplog, *ENGINE_LOGS):
        Segmenter(config).warmup()
    assert "loaded cached OpenVINO fp32 model" in caplog.text and "building" not in caplog.text


@openvino_only
def test_a_stale_entry_is_rebuilt(small_cache, tmp_path, caplog):
    copy, config = _copy(small_cache, tmp_path)
    meta_path = _entry_dir(copy) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["key"]["openvino"] = "2020.1.0"  # made by another OpenVINO release
    meta_path.write_text(json.dumps(meta))
    with _logs(caplog, *ENGINE_LOGS):
        segmenter = Segmenter(config)
        segmenter.warmup()
    assert "stale (openvino: '2020.1.0'" in caplog.text and "built OpenVINO fp32 model" in caplog.text
    assert json.loads(meta_path.read_text())["key"]["openvino"] != "2020.1.0"
    assert segmenter.segment(make_scene(1, *SMALL)[0]).labels.shape == SMALL


@openvino_only
@pytest.mark.parametrize("damage", ["flipped bytes", "valid checksum, unloadable"])
def test_a_corrupt_entry_is_rebuilt(small_cache, tmp_path, caplog, damage):
    from rtseg_ros.io.files import file_sha256

    copy, config = _copy(small_cache, tmp_path)
    entry = _entry_dir(copy)
    blob = entry / "model.blob"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    blob.write_bytes(bytes(data[: len(data) // 3]) if damage != "flipped bytes" else bytes(data))
    if damage != "flipped bytes":  # the checksum matches the damage: only loading it can tell
        meta = json.loads((entry / "meta.json").read_text())
        meta["sha256"] = file_sha256(blob)
        (entry / "meta.json").write_text(json.dumps(meta))
    with _logs(caplog, *ENGINE_LOGS):
        segmenter = Segmenter(config)
        segmenter.warmup()
    expected = "is corrupt" if damage == "flipped bytes" else "failed to load"
    assert expected in caplog.text and "built OpenVINO fp32 model" in caplog.text
    assert segmenter.segment(make_scene(2, *SMALL)[0]).labels.shape == SMALL


@openvino_only
@pytest.mark.slow
def test_int8_is_calibrated_once_and_reused(reference_dir, tmp_path, caplog):
    pytest.importorskip("nncf")
    from rtseg_ros.engines.calibration import write_synthetic_calibration_frames

    frames = write_synthetic_calibration_frames(tmp_path / "frames", 3, (96, 160))
    weights = _weights(reference_dir, "atonet")
    int8 = _config("atonet", SMALL, tmp_path / "cache", precision="int8", calibration_data=str(frames),
                   calibration_frames=2, weights=weights)
    with _logs(caplog, *ENGINE_LOGS):
        segmenter = Segmenter(int8)
        quantized = segmenter.segment(make_scene(3, 96, 160)[0])
    assert "calibrating int8 with NNCF on up to 2 frames" in caplog.text
    fp32 = Segmenter(_config("atonet", SMALL, tmp_path / "cache", weights=weights)).segment(make_scene(3, 96, 160)[0])
    # The reference weights are random: their logits are full of near-ties that int8 flips, so this only
    # checks that the quantized network still computes the same function (chance is 1 in 19); the
    # accuracy of int8 is measured on a trained model (docs/openvino.md).
    assert (quantized.labels == fp32.labels).mean() > 0.5
    (entry,) = [p for p in (tmp_path / "cache" / "openvino").iterdir() if p.name.endswith("int8-CPU")]
    key = json.loads((entry / "meta.json").read_text())["key"]
    assert key["calibration"]["frames"] == 2 and key["calibration"]["fingerprint"]

    caplog.clear()
    with _logs(caplog, *ENGINE_LOGS):
        again = Segmenter(int8)
        np.testing.assert_array_equal(again.segment(make_scene(3, 96, 160)[0]).labels, quantized.labels)
    assert "loaded cached OpenVINO int8 model" in caplog.text and "calibrating" not in caplog.text
    # New calibration frames make the calibrated engine stale.
    before = again.engine._key(SMALL, False)
    write_synthetic_calibration_frames(frames, 4, (96, 160))
    assert again.engine._key(SMALL, False)["calibration"] != before["calibration"]


@openvino_only
@pytest.mark.slow
def test_bench_compares_fp32_and_int8_in_one_run(reference_dir, tmp_path):
    pytest.importorskip("nncf")
    from rtseg_ros.cli.bench import bench

    report = tmp_path / "bench.json"
    table = tmp_path / "bench.md"
    result = CliRunner().invoke(bench, [
        "--model", "atonet", "--resolution", "64x96", "--backend", "torch", "--backend", "openvino",
        "--precision", "fp32", "--precision", "int8", "--frame-size", "80x120", "--warmup", "0", "--iters", "3",
        "--threads", "2", "--calibration-frames", "2", "--weights", f"atonet={_weights(reference_dir, 'atonet')}",
        "--cache-dir", str(tmp_path / "cache"), "--json", str(report), "--markdown", str(table)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    rows = {(r["backend"], r["precision"]): r for r in data["rows"]}
    assert set(rows) == {("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")}
    # One loop: every row is timed against the same baseline frames.
    assert len({r["baseline_e2e_ms_median"] for r in rows.values()}) == 1
    for row in rows.values():
        low, high = row["speedup_pairs_iqr"]
        assert 0 < low <= row["speedup_pairs_median"] <= high
        assert 0 <= row["prepost_share_median"] < 1
    int8 = rows[("openvino", "int8")]
    assert int8["fp32_reference"] == "openvino" and 0 < int8["label_agreement_vs_fp32"] <= 1
    assert int8["calibration"]["frames"] == 2
    assert rows[("openvino", "fp32")]["label_agreement_vs_fp32"] is None
    assert [s["case"].split()[3:5] for s in data["skipped"]] == [["torch", "int8"]]
    assert data["machine"]["openvino"] and len(data["load_average_at_end"]) == 3
    markdown = table.read_text()
    assert "pair speedup" in markdown and "| openvino | int8 |" in markdown and "load average" in markdown
