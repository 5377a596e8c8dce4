"""``rtseg info``: parameters and GFLOPs of a model's inference graph, or (``--runtime``) the inference stack."""
from __future__ import annotations

import importlib
import json
import platform
from pathlib import Path
from typing import Any

import click

from rtseg_ros.cli.options import ALL_SCALES_TEXT, parse_scales, parse_size
from rtseg_ros.machine import distribution_version
from rtseg_ros.names import MODEL_NAMES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default=MODEL_NAMES[0], show_default=True)
@click.option(
    "--scales", default=ALL_SCALES_TEXT, show_default=True,
    help=f"MFARANet scales fused into the output (subset of {ALL_SCALES_TEXT}); a single scale is the pruned model.",
)
@click.option("--size", default="1024x2048", show_default=True, help="Input HEIGHTxWIDTH.")
@click.option("--num-classes", type=click.IntRange(min=1), default=19, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--runtime", is_flag=True,
              help="Print the inference stack instead: torch, CUDA, cuDNN, TensorRT, torch_tensorrt, ModelOpt, "
                   "ONNX Runtime providers, OpenVINO and the GPU.")
def info(model_name: str, scales: str, size: str, num_classes: int, as_json: bool, runtime: bool) -> None:
    """Parameters and GFLOPs of a model's inference graph (batch 1, no weights needed).

    Example: rtseg info --model mfaranet --scales 2 --size 1024x2048; rtseg info --runtime
    """
    if runtime:
        report = runtime_report()
        if as_json:
            click.echo(json.dumps(report))
        else:
            width = max(len(name) for name in report)
            for name, value in report.items():
                click.echo(f"{name:<{width}}  {value}")
        return
    from rtseg_ros.nets.complexity import FLOPS_NOTE, measure_complexity

    height, width = parse_size(size)
    try:
        result = measure_complexity(
            model_name, scales=parse_scales(scales), height=height, width=width, num_classes=num_classes
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    scale_text = ",".join(map(str, result.scales)) if model_name == "mfaranet" else "n/a"
    click.echo(f"model       {result.model}")
    click.echo(f"scales      {scale_text}")
    click.echo(f"input       1x3x{height}x{width}, {num_classes} classes")
    click.echo(f"parameters  {result.parameters:,} ({result.mparams:.2f} M, modules in the inference graph)")
    click.echo(f"GFLOPs      {result.gflops:.1f}")
    click.echo(f"note        {FLOPS_NOTE}")


NOT_INSTALLED = "not installed"


def _module_version(module: str, distribution: str | None = None) -> str:
    """``module``'s version, "not installed", or why an installed module does not import.

    Importing is the test that matters: torch_tensorrt and tensorrt are often installed but fail to
    load their CUDA or TensorRT libraries.
    """
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return NOT_INSTALLED
        return f"installed, fails to import ({type(exc).__name__}: {exc})"
    except Exception as exc:  # noqa: BLE001 - OSError from a missing shared library, and the like
        return f"installed, fails to import ({type(exc).__name__}: {exc})"
    version = getattr(loaded, "__version__", None)
    if version is None and distribution:
        version = distribution_version(distribution)
    return str(version or "unknown version")


def runtime_report() -> dict[str, Any]:
    """What this machine can run: library versions, ONNX Runtime providers and the GPU."""
    import torch

    report: dict[str, Any] = {"python": f"{platform.python_version()} ({platform.machine()})"}
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        report["jetson"] = tegra.read_text(errors="replace").splitlines()[0].strip("# ").strip()
    report["torch"] = torch.__version__
    report["cuda"] = (f"{torch.version.cuda} (available)" if torch.cuda.is_available()
                      else f"{torch.version.cuda or 'none: CPU build of torch'} (not available)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report["cudnn"] = str(cudnn) if cudnn else NOT_INSTALLED
    if torch.cuda.is_available():
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(f"cuda:{index} {props.name}, compute capability {props.major}.{props.minor}, "
                        f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB")
        report["gpu"] = "; ".join(gpus)
    else:
        report["gpu"] = "none (CUDA not available)"
    report["tensorrt"] = _module_version("tensorrt")
    report["torch_tensorrt"] = _module_version("torch_tensorrt", "torch-tensorrt")
    report["modelopt"] = _module_version("modelopt", "nvidia-modelopt")
    report["onnxruntime"] = _module_version("onnxruntime")
    if report["onnxruntime"] != NOT_INSTALLED and not report["onnxruntime"].startswith("installed,"):
        import onnxruntime

        report["onnxruntime_providers"] = ", ".join(onnxruntime.get_available_providers())
    report["openvino"] = _module_version("openvino")
    return report
