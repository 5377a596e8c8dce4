"""SegmenterConfig validation and the engine cache: fast, no network is built."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from rtseg_ros.engines import ConfigError, Segmenter, SegmenterConfig, check_runtime
from rtseg_ros.engines.cache import ArtifactCache, state_dict_sha256


def _error(**settings) -> str:
    with pytest.raises(ConfigError) as info:
        SegmenterConfig(**settings).validate()
    return str(info.value)


def test_defaults_are_valid():
    config = SegmenterConfig()
    config.validate()
    assert config.network_size == (512, 1024)
    assert config.resolved_num_classes() == 19


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"precision": "int8"}, "int8 needs the tensorrt backend"),
        # int8 on a CPU is the openvino backend's (NNCF); onnxruntime runs fp32 only.
        ({"precision": "int8", "backend": "onnxruntime"}, "or the openvino backend on a CPU"),
        ({"scales": (1, 5)}, "unknown scale"),
        ({"scales": ()}, "unknown scale"),
        ({"scales": (2, 2)}, "repeat"),
        ({"model": "atonet", "scales": (2,)}, "atonet has none"),
        ({"input_height": 500}, "not divisible by 32"),
        ({"input_width": 1000}, "use 992 or 1024"),
        ({"input_height": 0}, "positive integer"),
        ({"backend": "tvm"}, "unknown backend 'tvm'"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"precision": "fp16"}, "fp16 is not supported on cpu"),
        ({"backend": "tensorrt"}, "tensorrt backend needs CUDA and torch_tensorrt"),
        ({"backend": "onnxruntime", "precision": "fp16", "device": "cuda"}, "fp32 export only"),
        ({"device": "gpu"}, "unknown device"),
        ({"model": "segformer"}, "unknown model"),
        ({"label_set": "ade20k"}, "unknown label set"),
        ({"num_classes": 11}, "does not match label set"),
        ({"output_resolution": "frame"}, "is not input, network or WIDTHxHEIGHT such as 640x480"),
        ({"output_resolution": "640x"}, "'640x' is not input, network or WIDTHxHEIGHT"),
        ({"output_resolution": "abc"}, "'abc' is not input, network or WIDTHxHEIGHT"),
        ({"output_resolution": "0x480"}, "'0x480': width and height must be in 1..16384"),
        ({"backend": "tensorrt", "device": "cuda", "precision": "int8"}, "calibration_data"),
    ],
)
def test_invalid_settings_fail_with_a_reason(settings, reason):
    assert reason in _error(**settings)


def test_valid_combinations_pass_validation():
    SegmenterConfig(model="atonet", label_set="camvid", input_height=352, input_width=480).validate()
    SegmenterConfig(backend="tensorrt", device="cuda:1", precision="int8", calibration_data="frames/").validate()
    SegmenterConfig(backend="tensorrt", device="cuda", precision="fp16").validate()
    config = SegmenterConfig(scales=[3, 1])
    config.validate()
    assert config.scales == (1, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize(("text", "size"), [("input", None), ("network", None), ("640x480", (480, 640)),
                                            ("640X480", (480, 640)), ("1x16384", (16384, 1))])
def test_output_resolution_forms(text, size):
    from rtseg_ros.names import fixed_output_size

    # Width first, as cameras state their sizes; the result is (height, width) like every size in the code.
    assert fixed_output_size(text) == size
    SegmenterConfig(output_resolution=text).validate()


@pytest.mark.parametrize("text", ["640x", "x480", "0x480", "640x0", "640x16385", "640 x 480", "-640x480", "640", ""])
def test_output_resolution_refuses_what_is_not_a_size(text):
    from rtseg_ros.names import fixed_output_size

    with pytest.raises(ValueError, match="output_resolution"):
        fixed_output_size(text)


def test_a_fixed_output_size_serves_every_frame_size():
    from rtseg_ros.engines.preprocessing import reference_preprocess

    torch.manual_seed(0)
    segmenter = Segmenter(SegmenterConfig(model="atonet", input_height=64, input_width=128,
                                          output_resolution="160x96"))
    assert segmenter.output_size((720, 1280)) == segmenter.output_size((50, 70)) == (96, 160)
    # Each output size is its own engine variant, so its cache slot names it.
    assert "-to-96x160-" in segmenter.engine.spec.cache_name(segmenter.output_size((720, 1280)), False)
    rng = np.random.default_rng(0)
    for frame_size in ((72, 128), (45, 200)):
        frame = rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8)
        result = segmenter.segment(frame, want_confidence=True)
        assert result.labels.shape == result.confidence.shape == (96, 160)
        # One interpolation, of the logits straight to the fixed size: labels are their argmax and
        # confidence their softmax maximum there, not a resampled frame-size result.
        image = torch.from_numpy(reference_preprocess(frame, (64, 128)))
        with torch.inference_mode():
            logits = segmenter.engine.model(image, output_size=(96, 160))
        np.testing.assert_array_equal(result.labels, logits.argmax(dim=1)[0].numpy().astype(np.uint8))
        np.testing.assert_allclose(result.confidence, torch.softmax(logits, dim=1).amax(dim=1)[0].numpy(), atol=1e-4)


def test_cuda_settings_fail_early_without_cuda():
    config = SegmenterConfig(device="cuda", precision="fp16")
    config.validate()
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_runtime(config)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Segmenter(config)


def test_missing_weights_file_fails_before_building(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        Segmenter(SegmenterConfig(weights=str(tmp_path / "absent.pth")))


def test_check_validates_then_checks_the_machine(tmp_path):
    with pytest.raises(ConfigError, match="unknown backend"):
        SegmenterConfig(backend="tvm").check()
    with pytest.raises(ConfigError, match="weights file not found"):
        SegmenterConfig(weights=str(tmp_path / "absent.pth")).check()
    config = SegmenterConfig(scales=[2, 1])
    config.check()
    assert config.scales == (1, 2)


def test_names_come_from_the_names_module():
    from rtseg_ros import names
    from rtseg_ros.engines import config

    for name in ("ALL_SCALES", "BACKENDS", "PRECISIONS", "OUTPUT_RESOLUTIONS", "SIZE_MULTIPLE"):
        assert getattr(config, name) is getattr(names, name)
    assert SegmenterConfig().scales == names.ALL_SCALES


def test_the_config_and_the_engines_package_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; import rtseg_ros.engines.config; from rtseg_ros.engines import SegmenterConfig; "
            "SegmenterConfig(model='atonet').validate(); SegmenterConfig().to_parameters(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_engine_parameter_sets_a_config_field():
    import dataclasses

    from rtseg_ros.names import ENGINE_PARAMETERS, PARAMETERS

    fields = {field.name: field for field in dataclasses.fields(SegmenterConfig)}
    for name in ENGINE_PARAMETERS:
        field = fields[PARAMETERS[name].config_field]
        default = field.default if field.default is not None else ""
        if name in ("backend", "device"):
            # The two deliberate differences: a node picks the fastest backend installed and a CUDA GPU
            # where there is one, the Python API (scripts, tests, rtseg eval) runs eagerly with nothing to
            # export, on the CPU unless it asks for a device.
            assert (PARAMETERS[name].default, default) == ("auto", {"backend": "torch", "device": "cpu"}[name])
            continue
        # The parameter's default is the config's default, in the parameter's type.
        assert PARAMETERS[name].default == (list(default) if isinstance(default, tuple) else default), name


def test_device_auto_takes_cuda_where_torch_sees_one_and_the_settings_run_there(monkeypatch):
    from rtseg_ros.engines.config import resolve_device

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("rtseg_ros.engines.config")
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it also clears the logger's enabled-for cache
    logger.addHandler(handler)
    try:
        config = SegmenterConfig.from_parameters({})  # a node's defaults
        assert config.device == "auto"
        config.check()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert resolve_device(config).device == "cpu"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
        assert resolve_device(config).device == "cuda"
        # Settings that do not run on CUDA keep the CPU, and the log says why the GPU was passed over.
        assert resolve_device(SegmenterConfig(device="auto", backend="openvino")).device == "cpu"
        # Set devices are kept as they are.
        assert resolve_device(SegmenterConfig(device="cpu")).device == "cpu"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [(record.levelno, record.getMessage()) for record in records]
    assert messages[:2] == [(logging.INFO, "device auto: using cpu (torch sees no CUDA GPU)"),
                            (logging.INFO, "device auto: using cuda (Test GPU)")]
    assert messages[2][0] == logging.WARNING and messages[2][1].startswith(
        "device auto: using cpu although a CUDA GPU is present; cuda cannot run these settings: the openvino backend")
    assert len(messages) == 3
    # Valid when one of the devices it may take runs the settings; else both reasons are given.
    SegmenterConfig(device="auto", precision="fp16").validate()
    with pytest.raises(ConfigError, match=r"device auto: neither device takes these settings \(cuda: the openvino"):
        SegmenterConfig(device="auto", backend="openvino", precision="fp16").validate()


def test_node_parameters_round_trip():
    from rtseg_ros.names import ENGINE_PARAMETERS, PARAMETERS

    config = SegmenterConfig(model="atonet", weights="/w/atonet.pth", label_set="camvid", input_height=352,
                             input_width=480, backend="onnxruntime", device="cuda:1", output_resolution="network",
                             cache_dir="/tmp/engines")
    values = config.to_parameters()
    assert list(values) == [name for name in PARAMETERS if name in ENGINE_PARAMETERS]
    assert values["weights"] == "/w/atonet.pth" and values["engine_cache_dir"] == "/tmp/engines"
    assert values["scales"] == [1, 2, 3, 4] and values["input_height"] == 352
    assert SegmenterConfig.from_parameters(values) == config
    # Empty paths are "none"; node-only parameters are ignored; missing ones take their defaults.
    defaults = SegmenterConfig.from_parameters({"weights": "", "publish_overlay": False, "scales": [2]})
    assert defaults == SegmenterConfig(scales=(2,), backend="auto", device="auto")  # a node's defaults: auto
    assert SegmenterConfig().to_parameters()["weights"] == ""
    # rclpy hands integer arrays over as array.array; a single integer is a one-element list.
    import array

    assert SegmenterConfig.from_parameters({"scales": array.array("q", [1, 3])}).scales == (1, 3)
    assert SegmenterConfig.from_parameters({"scales": 2}).scales == (2,)
    with pytest.raises(ConfigError, match="unknown node parameter.*input_size"):
        SegmenterConfig.from_parameters({"input_size": [512, 1024]})


def test_report_settings_round_trip_with_the_keys_reports_write():
    config = SegmenterConfig(model="mfaranet", weights="/w/m.pth", label_set="cityscapes", input_height=256,
                             input_width=512, scales=(2,), device="cpu")
    settings = config.to_settings(weights_sha256="ab" * 32)
    assert settings == {"name": "mfaranet", "weights": "/w/m.pth", "weights_sha256": "ab" * 32, "scales": [2],
                        "backend": "torch", "precision": "fp32", "device": "cpu", "output_resolution": "input",
                        "input_size": [256, 512]}
    assert json.loads(json.dumps(settings)) == settings
    assert SegmenterConfig.from_settings(settings, label_set="cityscapes") == config
    assert SegmenterConfig.from_settings(SegmenterConfig().to_settings(), label_set="cityscapes").weights is None
    row = SegmenterConfig(model="atonet", input_height=352, input_width=480).to_bench_fields()
    assert row == {"model": "atonet", "height": 352, "width": 480, "backend": "torch", "precision": "fp32",
                   "device": "cpu", "scales": [1, 2, 3, 4], "output_resolution": "input"}


def test_label_info_and_diagnostic_fields():
    from rtseg_ros.datasets.labels import CAMVID
    from rtseg_ros.names import LABEL_INFO_FORMAT

    config = SegmenterConfig(model="atonet", label_set="camvid", input_height=352, input_width=480)
    info = config.label_info_fields("cd" * 32)
    assert list(info) == ["format", "label_set", "num_classes", "ignore_index", "classes", "model", "scales",
                          "weights", "weights_sha256", "input_size", "output_resolution", "backend", "precision",
                          "device"]
    assert info["format"] == LABEL_INFO_FORMAT == "rtseg_ros/label_info/1"
    assert (info["label_set"], info["num_classes"], info["ignore_index"]) == ("camvid", 11, 255)
    assert info["classes"][1] == {"id": 1, "name": CAMVID.class_names[1], "color": list(CAMVID.colors[1])}
    assert (info["weights"], info["weights_sha256"], info["input_size"]) == ("", "cd" * 32, [352, 480])
    assert json.loads(json.dumps(info)) == info
    fields = config.diagnostic_fields()
    assert fields == {"model": "atonet", "backend": "torch", "precision": "fp32", "device": "cpu",
                      "input_size": "352x480", "scales": "1,2,3,4", "weights": "untrained (random)"}
    assert SegmenterConfig(weights="/w/m.pth").diagnostic_fields()["weights"] == "/w/m.pth"


def test_cache_entry_round_trip_stale_and_corrupt(tmp_path, caplog):
    cache = ArtifactCache(tmp_path, "demo")
    key = {"model": "mfaranet", "weights_sha256": "a" * 64, "input_size": (128, 256)}
    entry = cache.entry("mfaranet-128x256", "model.bin", key)
    assert entry.lookup() is None

    builds = []

    def build(path):
        builds.append(path)
        path.write_bytes(b"engine bytes")

    loaded = entry.load_or_build(lambda p: p.read_bytes(), build, "demo engine")
    assert loaded == b"engine bytes" and len(builds) == 1
    meta = json.loads(entry.meta_path.read_text())
    assert meta["key"]["input_size"] == [128, 256]
    assert not [p for p in entry.directory.iterdir() if p.name.endswith(".tmp")]

    # Same key: reused without building.
    again = cache.entry("mfaranet-128x256", "model.bin", key)
    assert again.load_or_build(lambda p: p.read_bytes(), build, "demo engine") == b"engine bytes"
    assert len(builds) == 1

    # Other weights in the same slot: stale, rebuilt, and the log says which field changed.
    stale = cache.entry("mfaranet-128x256", "model.bin", {**key, "weights_sha256": "b" * 64})
    with caplog.at_level(logging.WARNING, logger="rtseg_ros.engines.cache"):
        stale.load_or_build(lambda p: p.read_bytes(), build, "demo engine")
    assert len(builds) == 2
    assert "stale" in caplog.text and "weights_sha256" in caplog.text

    # Flipped bytes: checksum mismatch, rebuilt.
    caplog.clear()
    stale.artifact.write_bytes(b"engine bytez")
    with caplog.at_level(logging.WARNING, logger="rtseg_ros.engines.cache"):
        assert stale.load_or_build(lambda p: p.read_bytes(), build, "demo engine") == b"engine bytes"
    assert len(builds) == 3 and "corrupt" in caplog.text

    # Unreadable metadata: rebuilt.
    caplog.clear()
    stale.meta_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="rtseg_ros.engines.cache"):
        stale.load_or_build(lambda p: p.read_bytes(), build, "demo engine")
    assert len(builds) == 4 and "corrupt" in caplog.text


def test_cache_load_failure_rebuilds_once(tmp_path, caplog):
    entry = ArtifactCache(tmp_path, "demo").entry("slot", "model.bin", {"k": 1})
    entry.store(lambda p: p.write_bytes(b"old format"))
    calls = []

    def load(path):
        data = path.read_bytes()
        if data == b"old format":
            raise RuntimeError("unsupported format")
        return data

    def build(path):
        calls.append(path)
        path.write_bytes(b"new format")

    with caplog.at_level(logging.WARNING, logger="rtseg_ros.engines.cache"):
        assert entry.load_or_build(load, build, "demo engine") == b"new format"
    assert len(calls) == 1 and "failed to load" in caplog.text


def test_failed_build_leaves_no_entry(tmp_path):
    entry = ArtifactCache(tmp_path, "demo").entry("slot", "model.bin", {"k": 1})

    def build(path):
        path.write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        entry.store(build)
    assert entry.lookup() is None
    assert not list(entry.directory.iterdir())


def test_state_dict_hash_tells_random_draws_apart():
    torch.manual_seed(0)
    first = torch.nn.Conv2d(3, 4, 3)
    second = torch.nn.Conv2d(3, 4, 3)
    assert state_dict_sha256(first) == state_dict_sha256(first)
    assert state_dict_sha256(first) != state_dict_sha256(second)


def test_calibration_frames_from_a_folder_and_a_bag(tmp_path):
    import cv2

    from rtseg_ros.datasets.synthetic import make_scene
    from rtseg_ros.engines.calibration import CalibrationDataError, iter_calibration_frames
    from rtseg_ros.io.bags import write_frames

    images = [make_scene(seed, 48, 64)[0] for seed in range(3)]
    folder = tmp_path / "frames" / "nested"
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
    (folder / "notes.txt").write_text("not an image")
    frames = list(iter_calibration_frames(tmp_path / "frames", limit=2))
    assert len(frames) == 2 and all(order == "bgr" for _, order in frames)
    np.testing.assert_array_equal(frames[0][0][..., ::-1], images[0])

    bag = tmp_path / "bag"
    write_frames(bag, [(image, None, None) for image in images])
    from_bag = list(iter_calibration_frames(bag, limit=10))
    assert len(from_bag) == 3
    image, order = from_bag[1]
    np.testing.assert_array_equal(image if order == "rgb" else image[..., ::-1], images[1])

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match="no readable frames"):
        list(iter_calibration_frames(empty, limit=4))
