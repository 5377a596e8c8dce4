"""Facts about this machine that reports and statuses name: the CPU model, its instruction-set extensions, any
cap on the instruction set in force, the load and installed library versions.

Torch-free and rclpy-free; the benchmarks' machine block, ``rtseg info --runtime``, the TensorRT cache
key and the node's ``hardware_id`` all read them here.
"""
from __future__ import annotations

import importlib.metadata
import os
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


# /proc/cpuinfo flag -> the name reports use, in the order a report lists them.
ISA_FLAGS: dict[str, str] = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}

# Environment variables that cap the instruction set the CPU kernels use: oneDNN (torch's and OpenVINO's
# CPU plugin's, older releases read the DNNL_ name) and torch's own ATen kernels. ONNX Runtime has none.
ISA_LIMIT_VARIABLES: tuple[str, ...] = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_isa_extensions() -> list[str]:
    """The vector and matrix extensions of :data:`ISA_FLAGS` this CPU has, by their report names."""
    flags = cpu_flags()
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


def isa_limits(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The instruction-set caps in force (:data:`ISA_LIMIT_VARIABLES` that are set), name -> value."""
    source = os.environ if environ is None else environ
    return {name: source[name] for name in ISA_LIMIT_VARIABLES if source.get(name)}


def isa_limit_environment(isa: str) -> dict[str, str]:
    """The variables that cap torch's and OpenVINO's CPU kernels at ``isa`` (``avx2``, ``avx512``).

    oneDNN honours them in every convolution, pooling and element-wise kernel; OpenVINO's own kernels
    (interpolation, reductions, TopK) choose from the CPU's flags and keep AVX-512 where it exists,
    which the profile's exec types show. Set them before torch or openvino is imported.

    Raises:
        ValueError: an ``isa`` other than ``avx2`` or ``avx512``.
    """
    limits = {"avx2": ("AVX2", "avx2"), "avx512": ("AVX512_CORE", "avx512")}
    if isa not in limits:
        raise ValueError(f"unknown instruction-set limit {isa!r}; choose from {', '.join(limits)}")
    onednn, aten = limits[isa]
    return {"ONEDNN_MAX_CPU_ISA": onednn, "DNNL_MAX_CPU_ISA": onednn, "ATEN_CPU_CAPABILITY": aten}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or ``None`` where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def busy_warning(load: list[float] | None, cores: int | None) -> str | None:
    """A warning when the 1-minute load is above 1 per core (timings then measure the other work too)."""
    if not load or not cores or load[0] <= cores:
        return None
    return (f"the machine is not idle: 1-minute load average {load[0]:.2f} on {cores} cores; absolute times "
            f"are inflated and same-run ratios against a multi-threaded baseline are too: measure again idle")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and container limits narrow),
    else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cpu_threads(cores: int | None = None) -> int:
    """The network's thread count when none is chosen: every usable core but one, at least one.

    The core left over runs the middleware's threads (DDS delivery, the executor), the frame thread's
    decoding and publishing, and the camera driver; when the network takes every core, those preempt
    its threads in the middle of a layer and a synchronised parallel region waits for the slowest one.
    """
    return max(1, (usable_cores() if cores is None else cores) - 1)
