"""Where an OpenVINO engine's time goes, and how close it runs to OpenVINO's own ``benchmark_app``.

:func:`profile_segmenter` imports the compiled model the backend serves (the cached blob, same properties)
with performance counters on, runs it on camera frames and adds each executed layer's time to a part of
the network: encoder, multi-level aggregation, flow alignment (``grid_sample`` included), heads and score
fusion, the final resize and argmax. The converted graph names every operation after the torch module
that made it (:func:`rtseg_ros.engines.openvino_engine.name_by_module`), and the compiled model keeps
those names in each executed node's ``originalLayersNames``, so the mapping needs no guesswork. Each part
reports the precision its kernels ran in (the exec type's suffix: ``I8``/``u8`` int8, ``f32``, ``bf16``)
and the kernels' instruction set (``avx512``, ``avx2``, ``amx``), which shows whether an ISA limit held.

:func:`benchmark_app_comparison` runs ``benchmark_app`` on the same blob with the same properties between
two batches of our own frames, so both latencies come from the same minutes of the machine.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtseg_ros.engines.openvino_engine import HEAD_MODULE
from rtseg_ros.engines.preprocessing import reference_preprocess

PARTS: tuple[str, ...] = ("encoder", "multi-level aggregation", "flow alignment", "heads and score fusion",
                          "final resize + argmax", "unattributed")

# Module path prefix -> part, per network (the first prefix that matches wins; "model" is the network's
# own forward, "head" the segmentation head's argmax/confidence).
_PART_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "mfaranet": (("model.encoder", "encoder"), ("model.lateral_projections", "multi-level aggregation"),
                 ("model.aggregation", "multi-level aggregation"), ("model.alignments", "flow alignment"),
                 ("model.scale_heads", "heads and score fusion"), ("model.fusion", "heads and score fusion"),
                 # The sampling grids and warps are computed in the network's own forward.
                 ("model", "flow alignment")),
    "atonet": (("model.encoder", "encoder"), ("model.context", "multi-level aggregation"),
               ("model.projections", "multi-level aggregation"), ("model.fusion", "multi-level aggregation"),
               ("model.relu", "multi-level aggregation"), ("model.classifier", "heads and score fusion"),
               ("model.aux_classifiers", "heads and score fusion"), ("model", "multi-level aggregation")),
}
_NAMED = re.compile(rf"({HEAD_MODULE}|model(?:\.[\w.]+)?)/(\w+)/")
# Layers whose precision matters for the time: the ones a quantizer could run in int8.
_COMPUTE_TYPES = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "MatMul", "FullyConnected",
                            "Interpolate", "GridSample", "AvgPool", "MaxPool", "ReduceMean"})


def part_of(model: str, module_path: str, graph_node: str, output_hw: tuple[int, int] | None,
            output_size: tuple[int, int]) -> str:
    """The part of ``model`` an operation made by ``module_path``'s graph node ``graph_node`` belongs to.

    Whatever runs at the labels' size outside the encoder is the final resize and argmax (nothing else of
    the network works at full resolution), as are the segmentation head's own operations.
    """
    if module_path == HEAD_MODULE or (output_hw == tuple(output_size) and not module_path.startswith("model.encoder")):
        return "final resize + argmax"
    if graph_node.startswith("grid_sampler"):
        return "flow alignment"
    for prefix, part in _PART_RULES.get(model, (("model.encoder", "encoder"),)):
        if module_path == prefix or module_path.startswith(prefix + "."):
            return part
    return "unattributed"


def exec_precision(exec_type: str) -> str:
    """The precision of a kernel from its exec type (``brgconv_avx512_I8`` -> ``int8``)."""
    suffix = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16", "i32": "int32"}.get(suffix,
                                                                                                      suffix)


def kernel_isa(exec_type: str) -> str:
    """The instruction set a kernel was generated for, from its exec type (``jit_avx2_f32`` -> ``avx2``)."""
    for isa in ("amx", "avx512", "avx2", "sse41"):
        if isa in exec_type:
            return isa
    return "reference/other"


def _runtime_nodes(compiled: Any, output_size: tuple[int, int]) -> dict[str, tuple[list[str], tuple[int, int] | None]]:
    """Executed node name -> (original layer names, output height x width) from the compiled model."""
    nodes = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        original = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        shape = op.get_output_partial_shape(0) if op.get_output_size() else None
        hw = None
        if shape is not None and shape.rank.is_static and shape.rank.get_length() >= 2 and shape.is_static:
            dims = [int(d.get_length()) for d in shape]
            hw = (dims[-2], dims[-1]) if len(dims) == 4 else (dims[-2], dims[-1]) if len(dims) in (2, 3) else None
        nodes[op.get_friendly_name()] = ([n for n in original.split(",") if n], hw)
    return nodes


def _origin(node_name: str, node_type: str, original: Sequence[str]) -> tuple[str, str] | None:
    """(module path, graph node) of an executed node, from its original layers or its own name. A reorder
    inserted between two layers is named after both; it is counted with the one it feeds."""
    for name in original:
        match = _NAMED.match(name)
        if match:
            return match.group(1), match.group(2)
    matches = _NAMED.findall(node_name)
    if matches:
        return matches[-1] if node_type == "Reorder" else matches[0]
    return None


def profile_segmenter(segmenter: Any, frames: Sequence[np.ndarray], iters: int = 10,
                      with_confidence: bool = False) -> dict[str, Any]:
    """Per-part time, precision and kernel ISA of the OpenVINO model ``segmenter`` serves for these frames.

    Args:
        segmenter: a :class:`~rtseg_ros.engines.Segmenter` on the ``openvino`` backend.
        frames: HxWx3 RGB camera frames (all of one size); the labels' size follows the segmenter's
            output resolution.
        iters: profiled inferences; each layer's time is its median over them.

    Raises:
        ValueError: the segmenter does not run OpenVINO.
    """
    engine = segmenter.engine
    if getattr(engine, "name", None) != "openvino":
        raise ValueError(f"the profile reads OpenVINO's performance counters; this Segmenter runs {engine.name}")
    config = segmenter.config
    labels = segmenter.segment(frames[0], want_confidence=with_confidence).labels  # builds what it serves
    output_size = (int(labels.shape[0]), int(labels.shape[1]))
    compiled = engine.profiling_model(output_size, with_confidence)
    request = compiled.create_infer_request()
    inputs = [np.ascontiguousarray(reference_preprocess(frame, config.network_size)) for frame in frames]
    request.infer({0: inputs[0]})  # first run: allocations and lazy kernel generation, not counted
    per_layer: dict[str, list[float]] = defaultdict(list)
    layer_kind: dict[str, tuple[str, str]] = {}
    wall_ms = []
    for index in range(iters):
        started = time.perf_counter()
        request.infer({0: inputs[index % len(inputs)]})
        wall_ms.append((time.perf_counter() - started) * 1e3)
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue
            per_layer[info.node_name].append(info.real_time.total_seconds() * 1e3)
            layer_kind[info.node_name] = (info.node_type, info.exec_type)

    nodes = _runtime_nodes(compiled, output_size)
    parts: dict[str, dict[str, Any]] = {part: {"ms": 0.0, "layers": 0, "precision_ms": defaultdict(float),
                                               "isa_ms": defaultdict(float), "fp32_compute_layers": []}
                                        for part in PARTS}
    layers = []
    previous = "unattributed"
    for name, times in per_layer.items():  # execution order
        node_type, exec_type = layer_kind[name]
        original, hw = nodes.get(name, ([], None))
        origin = _origin(name, node_type, original)
        # An operation the converter or the plugin added (a folded constant's multiply) runs between its
        # neighbours: it counts with the layer before it.
        part = part_of(config.model, origin[0], origin[1], hw, output_size) if origin else previous
        previous = part
        ms = statistics.median(times)
        precision = exec_precision(exec_type)
        entry = parts[part]
        entry["ms"] += ms
        entry["layers"] += 1
        entry["precision_ms"][precision] += ms
        entry["isa_ms"][kernel_isa(exec_type)] += ms
        layer = {"name": name, "part": part, "type": node_type, "exec_type": exec_type, "precision": precision,
                 "ms": ms}
        layers.append(layer)
        if precision == "fp32" and node_type in _COMPUTE_TYPES:
            entry["fp32_compute_layers"].append(layer)
    total = sum(p["ms"] for p in parts.values())
    table = []
    for part in PARTS:
        entry = parts[part]
        if not entry["layers"]:
            continue
        table.append({"part": part, "ms": entry["ms"], "share": entry["ms"] / total if total else None,
                      "layers": entry["layers"], "precision_ms": dict(entry["precision_ms"]),
                      "isa_ms": dict(entry["isa_ms"]),
                      "fp32_compute_layers": [{k: v for k, v in layer.items() if k != "part"}
                                              for layer in sorted(entry["fp32_compute_layers"],
                                                                  key=lambda item: -item["ms"])]})
    return {"model": config.model, "scales": list(config.scales), "precision": config.precision,
            "network_size": list(config.network_size), "output_size": list(output_size),
            "threads": engine.properties.get("INFERENCE_NUM_THREADS"), "properties": dict(engine.properties),
            "artifact": str(engine.compiled_artifact(output_size, with_confidence)), "iters": iters,
            "infer_ms_median": statistics.median(wall_ms), "layers_ms_total": total, "parts": table,
            "slowest_layers": sorted(layers, key=lambda item: -item["ms"])[:15]}


def format_profile(profile: dict[str, Any]) -> str:
    """The profile as Markdown: one row per part, then the slowest layers."""
    def split(values: dict[str, float]) -> str:
        total = sum(values.values()) or 1.0
        return ", ".join(f"{key} {value / total:.0%}" for key, value in sorted(values.items(), key=lambda kv: -kv[1]))

    scales = ",".join(map(str, profile["scales"]))
    lines = [f"**{profile['model']}** (scales {scales}) {profile['precision']}, network "
             f"{profile['network_size'][0]}x{profile['network_size'][1]}, labels "
             f"{profile['output_size'][0]}x{profile['output_size'][1]}, {profile['threads']} thread(s): "
             f"infer {profile['infer_ms_median']:.1f} ms (median of {profile['iters']}), layers add up to "
             f"{profile['layers_ms_total']:.1f} ms.", "",
             "| part | ms | share | layers | executed precision (by time) | kernel ISA (by time) | fp32 compute layers |",
             "|---|---|---|---|---|---|---|"]
    for row in profile["parts"]:
        fp32 = row["fp32_compute_layers"]
        fp32_text = f"{len(fp32)} ({sum(layer['ms'] for layer in fp32):.1f} ms)" if fp32 else "0"
        lines.append(f"| {row['part']} | {row['ms']:.1f} | {row['share']:.1%} | {row['layers']} | "
                     f"{split(row['precision_ms'])} | {split(row['isa_ms'])} | {fp32_text} |")
    lines += ["", "| slowest layers | part | type | exec type | ms |", "|---|---|---|---|---|"]
    for layer in profile["slowest_layers"]:
        lines.append(f"| `{layer['name']}` | {layer['part']} | {layer['type']} | {layer['exec_type']} | "
                     f"{layer['ms']:.2f} |")
    return "\n".join(lines)


def benchmark_app_command() -> list[str]:
    """How to start OpenVINO's ``benchmark_app`` (the console script, else the module the wheel ships)."""
    script = shutil.which("benchmark_app")
    return [script] if script else [sys.executable, "-m", "openvino.tools.benchmark.main"]


_MEDIAN = re.compile(r"Median:\s+([\d.]+)\s*ms")


def run_benchmark_app(model_path: str | Path, device: str, properties: dict[str, Any], seconds: float,
                      input_shape: Sequence[int] | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """``benchmark_app`` on an IR file with our compile ``properties`` (``-load_config``: precision, latency
    hint, our thread count; its own ``-nthreads`` may not be combined with ``-hint``), one request, input
    ``input_shape`` (``-shape``; ``None``: the IR's own). Returns its median latency and the command.

    Raises:
        RuntimeError: it failed or printed no median latency.
    """
    with tempfile.TemporaryDirectory(prefix="rtseg-benchmark-app-") as folder:
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps({device: {k: str(v) for k, v in properties.items()}}))
        command = [*benchmark_app_command(), "-m", str(model_path), "-d", device, "-hint", "latency", "-nireq", "1",
                   "-t", str(max(1, int(round(seconds)))), "-load_config", str(config_path)]
        if input_shape is not None:
            command += ["-shape", "[" + ",".join(str(int(v)) for v in input_shape) + "]"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = result.stdout + result.stderr
    match = _MEDIAN.search(output)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"benchmark_app failed (exit {result.returncode}): {output[-2000:]}")
    return {"median_ms": float(match.group(1)), "command": command, "properties": properties,
            "output_tail": output[-1500:]}


def benchmark_app_comparison(segmenter: Any, frames: Sequence[np.ndarray], iters: int = 10,
                             seconds: float = 10.0) -> dict[str, Any]:
    """Our forward time against ``benchmark_app``'s latency on the model we serve, in one run.

    ``benchmark_app`` gets the served model as IR (:meth:`OpenVINOEngine.ir_path`: the graph the blob
    was compiled from, kept beside it) and our compile properties, so it compiles what we compiled. ``iters``
    of our frames, then ``benchmark_app`` for ``seconds``, then ``iters`` more: our figure is the median
    over both batches of the Segmenter's ``inference`` step (the compiled model's call, pixels shared
    with OpenVINO in place), next to its end-to-end median.
    """
    engine = segmenter.engine
    if getattr(engine, "name", None) != "openvino":
        raise ValueError(f"benchmark_app runs OpenVINO models; this Segmenter runs {engine.name}")
    for frame in frames[:2]:
        segmenter.segment(frame)
    output_size = tuple(int(v) for v in segmenter.segment(frames[0]).labels.shape)
    ours: list[dict[str, float]] = []

    def batch() -> None:
        for index in range(iters):
            ours.append(segmenter.segment(frames[index % len(frames)]).timings_ms)

    model_path = engine.ir_path(output_size)
    batch()
    reference = run_benchmark_app(model_path, engine.ov_device, dict(engine.properties), seconds,
                                  (1, 3, *segmenter.config.network_size))
    batch()
    inference = statistics.median(t["inference"] for t in ours)
    return {"model": segmenter.config.model, "scales": list(segmenter.config.scales),
            "precision": segmenter.config.precision, "output_size": list(output_size),
            "ours_inference_ms_median": inference, "ours_total_ms_median": statistics.median(t["total"] for t in ours),
            "benchmark_app_median_ms": reference["median_ms"],
            "ours_over_benchmark_app": inference / reference["median_ms"],
            "benchmark_app_command": " ".join(reference["command"]), "iters": iters, "seconds": seconds}


def openvino_reports(cases: Sequence[Any], settings: Any, *, profile_dir: str | Path | None = None,
                     profile_iters: int = 10, benchmark_app_seconds: float = 0.0,
                     echo: Any = print) -> list[dict[str, Any]]:
    """The profile (Markdown + JSON in ``profile_dir``) and/or the ``benchmark_app`` comparison of every
    OpenVINO case of an ``rtseg bench`` matrix, on the engines the matrix ran (cache hits).

    Args:
        cases: :class:`~rtseg_ros.benchmarks.engines.BenchCase` rows; the non-OpenVINO ones are passed over.
        settings: the matrix's :class:`~rtseg_ros.benchmarks.engines.BenchSettings` (calibration prepared).
        profile_dir: where ``profile-<model>-s<scales>-<precision>.md/.json`` go; ``None``: no profile.
        benchmark_app_seconds: how long ``benchmark_app`` runs per case; 0: no comparison.

    Returns one entry per case: its profile and comparison, or the reason it failed.
    """
    import torch

    from rtseg_ros.benchmarks.engines import case_config
    from rtseg_ros.engines import Segmenter
    from rtseg_ros.io.frames import synthetic_frames

    results = []
    for case in cases:
        if case.backend != "openvino":
            continue
        label = f"{case.model} s{''.join(map(str, case.scales))} {case.precision}"
        frame_size = settings.frame_size or (case.height, case.width)
        frames = synthetic_frames(frame_size[0], frame_size[1], 2)
        entry: dict[str, Any] = {"case": label}
        try:
            torch.manual_seed(0)  # the random weights the matrix drew, so its cached engine is the one profiled
            segmenter = Segmenter(case_config(case, settings))
            if profile_dir is not None:
                profile = profile_segmenter(segmenter, frames, profile_iters)
                stem = Path(profile_dir) / f"profile-{case.model}-s{''.join(map(str, case.scales))}-{case.precision}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                stem.with_suffix(".json").write_text(json.dumps(profile, indent=2) + "\n")
                stem.with_suffix(".md").write_text(format_profile(profile) + "\n")
                entry["profile"] = profile
                echo(format_profile(profile))
                echo(f"wrote {stem}.md and .json")
            if benchmark_app_seconds > 0:
                comparison = benchmark_app_comparison(segmenter, frames, settings.iters, benchmark_app_seconds)
                entry["benchmark_app"] = comparison
                echo(f"{label}: our inference {comparison['ours_inference_ms_median']:.1f} ms, benchmark_app "
                     f"{comparison['benchmark_app_median_ms']:.1f} ms: ours/benchmark_app "
                     f"{comparison['ours_over_benchmark_app']:.3f}")
        except Exception as exc:  # noqa: BLE001 - one failing case must not end the others' reports
            entry["failure"] = f"{type(exc).__name__}: {exc}"
            echo(f"{label}: profile/benchmark_app failed: {entry['failure']}")
        results.append(entry)
    return results
