"""Facts about this machine that reports and statuses name: the CPU model and installed library versions.

Torch-free and rclpy-free; the benchmarks' machine block, ``rtseg info --runtime``, the TensorRT cache
key and the node's ``hardware_id`` all read them here.
"""
from __future__ import annotations

import importlib.metadata
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (x86: /proc/cpuinfo; ARM boards such as a Jetson: the device-tree model)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    try:
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def distribution_version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` (pip names) that is installed, else None."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
