"""One user cache: engines, the weight search path, the demo's toy model and recipe paths all follow it."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from rtseg_ros import user_cache
from rtseg_ros.engines import SegmenterConfig, default_cache_dir
from rtseg_ros.nets.weights import search_dirs


def test_the_cache_follows_rtseg_ros_cache_then_xdg_then_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RTSEG_ROS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache.cache_dir() == tmp_path / "xdg" / "rtseg_ros"
    monkeypatch.setenv("RTSEG_ROS_CACHE", str(tmp_path / "robot_ssd"))
    assert user_cache.cache_dir() == tmp_path / "robot_ssd"
    monkeypatch.delenv("RTSEG_ROS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache.cache_dir() == tmp_path / "home" / ".cache" / "rtseg_ros"


def test_engines_weights_and_recipes_share_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RTSEG_ROS_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert SegmenterConfig(model="atonet").resolved_cache_dir() == tmp_path / "cache"
    assert tmp_path / "cache" / "models" in search_dirs()
    assert user_cache.expand_path("{cache}/models/toy.pth") == tmp_path / "cache" / "models" / "toy.pth"
    assert user_cache.expand_path("runs/{name}", name="synthetic") == Path("runs/synthetic")
    from rtseg_ros.training.recipe import load_recipe

    weights = load_recipe("synthetic")["output"]["weights"]
    assert user_cache.expand_path(weights) == tmp_path / "cache" / "models" / "synthetic_toy.pth"


def test_the_demo_keeps_its_toy_model_there(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("cv2")
    monkeypatch.setenv("RTSEG_ROS_CACHE", str(tmp_path / "cache"))
    import rtseg_ros.ros.demo as demo

    try:
        demo = importlib.reload(demo)  # the paths are read when the module loads
        assert demo.TOY_WEIGHTS == tmp_path / "cache" / "models" / "synthetic_toy.pth"
        assert demo.TOY_RUN_DIR == tmp_path / "cache" / "toy_training"
    finally:
        monkeypatch.delenv("RTSEG_ROS_CACHE")
        importlib.reload(demo)
