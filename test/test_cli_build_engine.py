"""``rtseg build-engine``: the engines a node config needs are built into the cache, and a later start hits it."""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from rtseg_ros.cli.build_engine import build_engine
from rtseg_ros.engines import Segmenter, SegmenterConfig

CAMERA = (96, 160)
NETWORK = (64, 128)


def _params_file(tmp_path, **values) -> str:
    lines = ["/**:", "  ros__parameters:", "    model: atonet", f"    input_height: {NETWORK[0]}",
             f"    input_width: {NETWORK[1]}", *(f"    {name}: {value}" for name, value in values.items())]
    path = tmp_path / "robot.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _engines(cache_dir, kind: str) -> dict[str, dict]:
    return {meta.parent.name: json.loads(meta.read_text())["key"] for meta in (cache_dir / kind).glob("*/meta.json")}


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs OpenVINO ('rtseg_ros[openvino]')")
@pytest.mark.slow
def test_build_engine_fills_the_cache_and_the_next_start_hits_it(tmp_path, reference_dir, caplog):
    cache_dir = tmp_path / "cache"
    weights = reference_dir / "atonet_official_random_fp16.pt"
    result = CliRunner().invoke(build_engine, [
        _params_file(tmp_path, backend="openvino", weights=str(weights)), "--camera-size", "96x160",
        "--cache-dir", str(cache_dir), "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "labels: built in" in result.output and "labels+confidence: built in" in result.output
    keys = _engines(cache_dir, "openvino")
    assert sorted(key["outputs"] for key in keys.values()) == [["labels"], ["labels", "confidence"]]
    assert all(key["output_size"] == list(CAMERA) for key in keys.values())

    # A second run finds everything.
    again = CliRunner().invoke(build_engine, [
        _params_file(tmp_path, backend="openvino", weights=str(weights)), "--camera-size", "96x160",
        "--cache-dir", str(cache_dir)])
    assert again.exit_code == 0 and again.output.count("loaded from the cache") == 2, again.output

    # The node's Segmenter with the same settings loads them and says how long it took.
    config = SegmenterConfig(model="atonet", weights=str(weights), input_height=NETWORK[0], input_width=NETWORK[1],
                             backend="openvino", cache_dir=str(cache_dir))
    caplog.clear()
    logger = logging.getLogger("rtseg_ros.engines.cache")
    # The handler goes on the logger itself (launch_testing's plugin stops propagation to the root's),
    # and propagation is off meanwhile, so each record arrives once either way.
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            Segmenter(config).warmup(CAMERA)
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = propagate
    hits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded cached OpenVINO")]
    assert len(hits) == 1 and hits[0].endswith(" s") and " in " in hits[0]
    assert not [r for r in caplog.records if r.getMessage().startswith("building")]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime ('rtseg_ros[onnx]')")
def test_options_override_the_params_file_and_labels_only_builds_one_engine(tmp_path):
    cache_dir = tmp_path / "cache"
    result = CliRunner().invoke(build_engine, [
        _params_file(tmp_path, backend="openvino"), "-p", "backend=onnxruntime", "-p", "output_resolution:=network",
        "--labels-only", "--cache-dir", str(cache_dir), "--threads", "2"])
    assert result.exit_code == 0, result.output
    # Labels only, on a CPU: ONNX Runtime runs the network body and labels come cell by cell, so the one
    # engine is the body (no output size in its key: it serves every size).
    (key,) = _engines(cache_dir, "onnx").values()
    assert key["part"].startswith("network body") and key["input_size"] == list(NETWORK) and key["max_batch"] == 1
    assert "labels+confidence" not in result.output


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime ('rtseg_ros[onnx]')")
@pytest.mark.slow
def test_an_export_prints_no_third_party_noise_and_random_weights_hit_the_cache(tmp_path):
    # As a user runs it (its own process, its own logging set-up): pytest's log capture would hide what
    # the command's root handler prints.
    rtseg = shutil.which("rtseg")
    assert rtseg, "the rtseg console script is not on PATH (pip install -e .)"
    command = [rtseg, "build-engine", _params_file(tmp_path), "-p", "backend=onnxruntime", "--camera-size", "64x128",
               "--labels-only", "--cache-dir", str(tmp_path / "cache"), "--threads", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "labels: built in" in output, output
    # The package's own INFO lines stay (the build and how long it took) ...
    assert re.search(r"^INFO rtseg_ros\.engines\.cache: built ONNX export", output, re.MULTILINE), output
    # ... the exporter's libraries' INFO lines (hundreds per export at INFO) and torchvision notices do not.
    noise = [line for line in output.splitlines()
             if re.match(r"INFO (onnx_ir|onnxscript)", line) or "torchvision is not installed" in line]
    assert not noise, "\n".join(noise[:5])
    # No weights: the fixed-seed random weights, so the next run (or a node) finds the engine, and the
    # warning says they are untrained, not that nothing is reused.
    assert "UNTRAINED random weights (fixed seed" in output and "not reused" not in output
    again = CliRunner().invoke(build_engine, command[2:])
    assert again.exit_code == 0 and "labels: loaded from the cache" in again.output, again.output


def test_the_torch_backend_has_nothing_to_build(tmp_path):
    result = CliRunner().invoke(build_engine, [_params_file(tmp_path), "-p", "backend=torch", "--camera-size",
                                               "96x160", "--labels-only", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "nothing to build" in result.output
    # Without weights the engines run untrained (fixed-seed) random weights: said loudly.
    assert "no weights set" in result.output and "UNTRAINED" in result.output


@pytest.mark.parametrize(("arguments", "message"), [
    (["-p", "backend=torch"], "give --camera-size"),
    (["-p", "input_size=64", "--camera-size", "96x160"], "unknown node parameter 'input_size'"),
    (["-p", "backend", "--camera-size", "96x160"], "is not NAME=VALUE"),
    (["-p", "backend=torch", "--camera-size", "96by160"], "HEIGHTxWIDTH"),
    (["-p", "input_height=100", "--camera-size", "96x160"], "not divisible by 32"),
])
def test_bad_settings_fail_with_a_reason(tmp_path, arguments, message):
    result = CliRunner().invoke(build_engine, [_params_file(tmp_path), *arguments,
                                               "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code != 0 and message in result.output, result.output


def test_a_missing_params_file_is_named(tmp_path):
    result = CliRunner().invoke(build_engine, [str(tmp_path / "absent.yaml"), "--camera-size", "96x160"])
    assert result.exit_code != 0 and "no params file" in result.output


def test_a_missing_openvino_install_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] == "openvino" else real(name, *a, **k))
    result = CliRunner().invoke(build_engine, [_params_file(tmp_path, backend="openvino"), "--camera-size", "96x160",
                                               "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "pip install 'rtseg_ros[openvino]'" in errors[0]
