"""What a newcomer meets first: one weights resolver everywhere, fixed random weights (the engine cache
hits), eager frames while a backend builds, the fp16 toy model file and `rtseg make-bag --synthetic`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rtseg_ros.cli.evaluate import _weights_and_model, evaluate, make_bag
from rtseg_ros.datasets.synthetic import HELD_OUT_FIRST_SEED, make_scene, to_camvid
from rtseg_ros.engines import Segmenter, SegmenterConfig
from rtseg_ros.engines.config import ConfigError, weights_file
from rtseg_ros.io.bags import CUSTOM_LABEL_SET, BagFrameReader, bag_custom_data
from rtseg_ros.nets import WeightsError, build_model, save_weights
from rtseg_ros.nets.checkpoint import read_state_dict, weights_hash, write_half_copy
from rtseg_ros.nets.weights import resolve_optional_weights, resolve_weights


def _random_atonet(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_weights(build_model("atonet", num_classes=19), path, model_name="atonet", label_set="cityscapes")


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache, and a working directory without a models/ folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RTSEG_ROS_CACHE", str(cache))
    monkeypatch.delenv("RTSEG_MODELS_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def test_a_file_name_in_the_user_cache_resolves_the_same_for_config_and_eval(user_cache: Path) -> None:
    weights = _random_atonet((user_cache / "models").mkdir(parents=True) or user_cache / "models" / "mine.pth")
    assert resolve_weights("mine.pth") == weights
    assert weights_file("mine.pth") == weights
    assert _weights_and_model("mine.pth", None) == (str(weights), "atonet")  # the model the file records
    assert resolve_optional_weights("") is None and weights_file(None) is None


def test_a_missing_name_says_where_it_looked(user_cache: Path) -> None:
    with pytest.raises(ConfigError, match="searched: .*cache/models"):
        weights_file("nowhere.pth")
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights("no/such/file.pth")


def test_a_manifest_entry_skips_copies_whose_hash_differs(user_cache: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _random_atonet(first / "toy.pth", seed=1)  # e.g. a retrained copy, earlier in the search order
    shipped = _random_atonet(second / "toy.pth", seed=2)
    manifest = ("models:\n  toy:\n    model: atonet\n    label_set: cityscapes\n    num_classes: 19\n"
                f"    file: toy.pth\n    sha256: {weights_hash(shipped)}\n")
    (first / "manifest.yaml").write_text(manifest)
    monkeypatch.setattr("rtseg_ros.nets.weights.search_dirs", lambda: [first, second])
    assert resolve_weights("toy") == shipped
    (second / "toy.pth").unlink()
    with pytest.raises(WeightsError, match="no copy of toy.pth matches"):
        resolve_weights("toy")


def test_no_weights_are_the_same_random_weights_every_time() -> None:
    config = SegmenterConfig(model="atonet", input_height=64, input_width=128)
    before = torch.random.get_rng_state()
    first, second = Segmenter(config), Segmenter(config)
    assert first.weights_id == second.weights_id  # so an exported engine is found again, not re-exported
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched


def test_eager_frames_match_the_backend_before_it_is_built(tmp_path: Path) -> None:
    config = SegmenterConfig(model="atonet", backend="onnxruntime", input_height=64, input_width=128,
                             cache_dir=str(tmp_path / "engines"))
    segmenter = Segmenter(config)
    frame, _ = make_scene(HELD_OUT_FIRST_SEED, 64, 128)
    eager = segmenter.segment(frame, want_confidence=True, eager=True)
    assert not segmenter.is_prepared((64, 128), True)  # served without building the ONNX model
    built = segmenter.segment(frame, want_confidence=True)
    assert eager.labels.dtype == built.labels.dtype == np.uint8
    assert (eager.labels == built.labels).mean() > 0.99
    np.testing.assert_allclose(eager.confidence, built.confidence, atol=1e-3)


def test_fp16_copy_is_half_the_size_and_serves_the_same_labels(tmp_path: Path) -> None:
    full = _random_atonet(tmp_path / "full.pth")
    half = write_half_copy(full, tmp_path / "half.pth")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert all(v.dtype != torch.float32 for v in read_state_dict(half).values())
    frame, _ = make_scene(HELD_OUT_FIRST_SEED + 1, 64, 128)
    labels = [Segmenter(SegmenterConfig(model="atonet", weights=str(path), input_height=64,
                                        input_width=128)).segment(frame).labels for path in (full, half)]
    assert (labels[0] == labels[1]).mean() > 0.98


@pytest.mark.parametrize("label_set", ["cityscapes", "camvid"])
def test_make_bag_synthetic_then_eval(tmp_path: Path, label_set: str) -> None:
    bag = tmp_path / "bag"
    made = CliRunner().invoke(make_bag, ["--synthetic", "2", "--synthetic-size", "64x128", "--label-set", label_set,
                                         "--out", str(bag)], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    assert bag_custom_data(bag)[CUSTOM_LABEL_SET] == label_set
    frames = list(BagFrameReader(bag))
    assert len(frames) == 2
    rgb, truth = make_scene(HELD_OUT_FIRST_SEED, 64, 128)
    assert np.array_equal(frames[0].image, rgb)
    assert np.array_equal(frames[0].labels, truth if label_set == "cityscapes" else to_camvid(truth))
    weights = _random_atonet(tmp_path / "w.pth") if label_set == "cityscapes" else None
    args = [str(bag), "--input-size", "64x128", "--backend", "torch", "--json", str(tmp_path / "r" / "report.json"),
            "--no-progress", "--overlays", "1"]
    if weights is not None:
        args += ["--weights", str(weights)]
    else:
        args += ["--model", "atonet"]
    result = CliRunner().invoke(evaluate, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["frames"] == 2 and report["complete"]
    assert report["label_set"] == label_set


def test_make_bag_synthetic_refuses_other_label_sets(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_bag, ["--synthetic", "1", "--label-set", "mapillary", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "cityscapes or camvid" in result.output
    assert not (tmp_path / "b").exists()
