"""Labels cell by cell (:class:`~rtseg_ros.engines.label_upsampling.UpsampledLabels`) against resize then
argmax, eager PyTorch and ONNX Runtime, on one CPU thread, on the shipped toy model's logits of synthetic
street scenes. Prints a table and writes JSON.

    python -m rtseg_ros.benchmarks.label_upsampling --json label_upsampling.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# (network input, labels) sizes, HxW: a small network to a VGA camera, the Nav2 preset's network to its
# depth size, and Cityscapes' full frame.
CASES = (((64, 128), (480, 640)), ((256, 512), (480, 640)), ((512, 896), (480, 640)), ((1024, 2048), (1024, 2048)))


def _median_ms(function: Callable[[], Any], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _onnxruntime_finish(model: torch.nn.Module, logits: torch.Tensor, size: tuple[int, int],
                        folder: Path) -> Callable[[], Any] | None:
    """ONNX Runtime's resize and argmax of ``logits`` at ``size``, one thread (the finish the backend ran
    before), or None where ONNX Runtime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from rtseg_ros.engines.base import LogitsFinish
    from rtseg_ros.engines.quiet_export import quiet_export

    path = folder / f"finish-{size[0]}x{size[1]}-{logits.shape[-2]}x{logits.shape[-1]}.onnx"
    with torch.no_grad(), quiet_export():
        torch.onnx.export(LogitsFinish(model, size, False).eval(), (logits,), str(path), dynamo=True,
                          input_names=["logits"], output_names=["labels"], external_data=False, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    array = logits.numpy()
    return lambda: session.run(None, {"logits": array})


def run(repeats: int = 10, scenes: int = 3) -> dict[str, Any]:
    """Median milliseconds per frame of each way, and how many labels differ from resize then argmax."""
    from rtseg_ros.datasets.synthetic import make_scene
    from rtseg_ros.engines.label_upsampling import UpsampledLabels
    from rtseg_ros.engines.preprocessing import Preprocessor
    from rtseg_ros.nets import build_model, load_weights
    from rtseg_ros.nets.weights import resolve_weights

    torch.set_num_threads(1)
    model = load_weights(build_model("atonet"), resolve_weights("synthetic_toy")).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        for network_size, size in CASES:
            cells, eager, onnx, differ, pixels = [], [], [], 0, 0
            labels_by_cells = UpsampledLabels(size, model.align_corners)
            preprocess = Preprocessor(network_size, torch.device("cpu"), channels_last=False)
            for seed in range(300, 300 + scenes):
                rgb, _ = make_scene(seed, *network_size)
                image = preprocess(torch.from_numpy(rgb))
                logits, _ = model.logits(image)
                cells.append(_median_ms(lambda: labels_by_cells(logits), repeats))
                eager.append(_median_ms(lambda: labels_by_cells.dense(logits), repeats))
                with torch.inference_mode(False):
                    finish = _onnxruntime_finish(model, logits.clone(), size, Path(folder))
                if finish is not None:
                    onnx.append(_median_ms(finish, repeats))
                differ += int((labels_by_cells.batch(logits) != labels_by_cells.dense(logits)).sum())
                pixels += size[0] * size[1]
            rows.append({"network_size": list(network_size), "logits_size": list(logits.shape[-2:]),
                         "labels_size": list(size), "cells_ms": statistics.median(cells),
                         "eager_resize_argmax_ms": statistics.median(eager),
                         "onnxruntime_resize_argmax_ms": statistics.median(onnx) if onnx else None,
                         "labels_differing": differ, "pixels": pixels})
    return {"rows": rows, "threads": 1, "scenes": scenes, "repeats": repeats,
            "model": "atonet synthetic_toy (shipped)"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per scene and way")
    parser.add_argument("--scenes", type=int, default=3, help="synthetic scenes per size")
    parser.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    from rtseg_ros.benchmarks.node import machine_state, write_report

    machine = machine_state()
    report = run(args.repeats, args.scenes)
    print(f"machine: {machine['cpu']}, ISA {', '.join(machine['isa_extensions'])}; load average "
          f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}; one thread")
    print("| network | logits | labels | cell by cell ms | eager resize+argmax ms | ONNX Runtime resize+argmax ms "
          "| labels differing |")
    print("|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        onnx = row["onnxruntime_resize_argmax_ms"]
        print(f"| {'x'.join(map(str, row['network_size']))} | {'x'.join(map(str, row['logits_size']))} | "
              f"{'x'.join(map(str, row['labels_size']))} | {row['cells_ms']:.1f} | "
              f"{row['eager_resize_argmax_ms']:.1f} | {'-' if onnx is None else f'{onnx:.1f}'} | "
              f"{row['labels_differing']} of {row['pixels']} |")
    after = machine_state()
    print(f"load average after: {', '.join(f'{v:.2f}' for v in after['load_average'])}")
    if args.json:
        write_report(args.json, report, "python -m rtseg_ros.benchmarks.label_upsampling "
                     + (f"--repeats {args.repeats} --scenes {args.scenes}"), machine, after)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
