"""Inference backends by name, each imported only when chosen.

A backend is registered as a name from :data:`rtseg_ros.names.BACKENDS` and the import path of its
:class:`~rtseg_ros.engines.base.InferenceEngine` subclass, so that naming a backend costs nothing:
``torch_tensorrt``, ``onnxruntime`` and the like load when :func:`create_engine` builds that backend,
never before. This module imports no torch.

Adding a backend: its name in :data:`~rtseg_ros.names.BACKENDS`, a ``register_backend`` line at the
end of this module, and the engine module itself.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rtseg_ros.names import BACKENDS

if TYPE_CHECKING:
    from rtseg_ros.engines.base import EngineSpec, InferenceEngine

# name -> "package.module:ClassName"
_BACKENDS: dict[str, str] = {}


def register_backend(name: str, target: str) -> None:
    """Registers backend ``name`` as the engine class at ``target`` (``"package.module:ClassName"``),
    which is imported only when the backend is used.

    Raises:
        ValueError: ``name`` is not in :data:`~rtseg_ros.names.BACKENDS` (add it there first), is already
            registered with another target, or ``target`` is not ``module:attribute``.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend name {name!r} is not in rtseg_ros.names.BACKENDS {BACKENDS}; add it there")
    module, _, attribute = target.partition(":")
    if not module or not attribute.isidentifier():
        raise ValueError(f"backend target must be 'package.module:ClassName', got {target!r}")
    known = _BACKENDS.get(name)
    if known is not None and known != target:
        raise ValueError(f"backend {name!r} is already registered as {known}")
    _BACKENDS[name] = target


def list_backends() -> tuple[str, ...]:
    """The registered backend names, in the order of :data:`~rtseg_ros.names.BACKENDS`."""
    return tuple(name for name in BACKENDS if name in _BACKENDS)


def get_backend_class(name: str) -> type[InferenceEngine]:
    """Imports and returns the engine class of backend ``name``.

    Raises:
        ValueError: no backend of that name.
        TypeError: the registered target is not an ``InferenceEngine`` subclass of that name.
    """
    from rtseg_ros.engines.base import InferenceEngine

    target = _BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(list_backends())}")
    module, _, attribute = target.partition(":")
    engine_class = getattr(importlib.import_module(module), attribute)
    if not (isinstance(engine_class, type) and issubclass(engine_class, InferenceEngine)):
        raise TypeError(f"backend {name!r}: {target} is not an InferenceEngine subclass")
    if engine_class.name != name:
        raise TypeError(f"backend {name!r}: {target} calls itself {engine_class.name!r}")
    return engine_class


def create_engine(spec: EngineSpec) -> InferenceEngine:
    """Builds the backend named by ``spec.config.backend`` for ``spec``."""
    return get_backend_class(spec.config.backend)(spec)


register_backend("torch", "rtseg_ros.engines.torch_engines:TorchEngine")
register_backend("compile", "rtseg_ros.engines.torch_engines:CompiledEngine")
register_backend("tensorrt", "rtseg_ros.engines.tensorrt_engine:TensorRTEngine")
register_backend("onnxruntime", "rtseg_ros.engines.onnxruntime_engine:OnnxRuntimeEngine")
register_backend("openvino", "rtseg_ros.engines.openvino_engine:OpenVINOEngine")
