"""The backend registry: names from the names table, engines imported only when chosen."""
from __future__ import annotations

import pytest

from rtseg_ros import names
from rtseg_ros.engines import registry
from rtseg_ros.engines.registry import get_backend_class, list_backends, register_backend


def test_registered_backends_are_the_names_table() -> None:
    assert list_backends() == names.BACKENDS


def test_every_backend_resolves_to_its_engine_class() -> None:
    # Engine modules import their optional libraries only when an engine is built, so this runs
    # without onnxruntime or torch_tensorrt installed (test_package_imports checks they stay unloaded).
    for name in list_backends():
        engine_class = get_backend_class(name)
        assert engine_class.name == name
        assert engine_class.__module__.startswith("rtseg_ros.engines.")


def test_bad_registrations_and_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    with pytest.raises(ValueError, match=r"'tvm' is not in rtseg_ros\.names\.BACKENDS"):
        register_backend("tvm", "somewhere:TVMEngine")
    with pytest.raises(ValueError, match="'package.module:ClassName'"):
        register_backend("torch", "rtseg_ros.engines.torch_engines")
    with pytest.raises(ValueError, match="already registered as rtseg_ros.engines.torch_engines:TorchEngine"):
        register_backend("torch", "rtseg_ros.engines.torch_engines:CompiledEngine")
    with pytest.raises(ValueError, match="unknown backend 'tvm'; choose one of torch, compile"):
        get_backend_class("tvm")
    # A target that is not an engine, or an engine that calls itself by another name, is refused.
    monkeypatch.setitem(registry._BACKENDS, "torch", "rtseg_ros.engines.base:SegmentationHead")
    with pytest.raises(TypeError, match="not an InferenceEngine subclass"):
        get_backend_class("torch")
    monkeypatch.setitem(registry._BACKENDS, "torch", "rtseg_ros.engines.torch_engines:CompiledEngine")
    with pytest.raises(TypeError, match="calls itself 'compile'"):
        get_backend_class("torch")
