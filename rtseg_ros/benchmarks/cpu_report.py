"""Every CPU figure of the README's CPU table in one run, for an idle machine: ``python -m rtseg_ros.benchmarks.cpu_report``.

Each part is its own ``rtseg`` process (an instruction-set cap must be in place before torch and
OpenVINO load), writes JSON and Markdown into ``--out``, and is timed; ``summary.json`` lists the
commands, their exit codes and durations, and the load average before and after each. The parts:

1. ``bench-native``: ``rtseg bench`` for MFARANet (4 scales and pruned to scale 2) and ATONet at 512x1024
   from 1024x2048 frames, labels at frame size, ONNX Runtime and OpenVINO, fp32 and int8, 2 threads, with
   the OpenVINO profiles (``--profile``) and the ``benchmark_app`` comparison (``--benchmark-app``);
2. ``bench-avx2``: the same with the kernels capped at AVX2 (``--isa-limit avx2``), with profiles;
3. ``node``: ``rtseg bench node`` with the default parameters (the network alone against inside the node,
   and the rate search);
4. ``toy-int8``: int8 against fp32 labels on the trained toy model (the manifest's ``synthetic_toy``).

``--smoke`` runs the same parts at toy sizes, to check the script in a minute or two; its figures mean
nothing. Nothing here is a measurement on a loaded machine: check ``summary.json``'s load averages.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rtseg_ros.machine import busy_warning, cpu_isa_extensions, cpu_model, load_average, usable_cores

RTSEG = [sys.executable, "-c", "from rtseg_ros.cli import main; main()"]


def bench_command(out: Path, name: str, *, smoke: bool, isa_limit: str | None, profile: bool,
                  benchmark_app_s: float, models: tuple[str, ...] = ("mfaranet", "atonet"),
                  scales: tuple[str, ...] = ("1,2,3,4", "2"), weights: tuple[str, ...] = ()) -> list[str]:
    """The ``rtseg bench`` command line of one part."""
    size, frames, iters, calibration = (("64x128", "128x256", "3", "4") if smoke else
                                        ("512x1024", "1024x2048", "6", "16"))
    command = ["bench", *[a for m in models for a in ("--model", m)], *[a for s in scales for a in ("--scales", s)],
               "--resolution", size, "--frame-size", frames, "--backend", "onnxruntime",
               "--backend", "openvino", "--precision", "fp32", "--precision", "int8", "--threads", "2",
               "--warmup", "1", "--iters", iters, "--calibration-frames", calibration,
               "--json", str(out / f"{name}.json"), "--markdown", str(out / f"{name}.md")]
    for item in weights:
        command += ["--weights", item]
    if isa_limit:
        command += ["--isa-limit", isa_limit]
    if profile:
        command += ["--profile", str(out / f"{name}-profiles"), "--profile-iters", "3" if smoke else "5"]
    if benchmark_app_s:
        command += ["--benchmark-app", str(benchmark_app_s)]
    return command


def node_command(out: Path, *, smoke: bool) -> list[str]:
    """``rtseg bench node`` with the node's default parameters (no ``-p``)."""
    command = ["bench", "node", "--json", str(out / "node.json"), "--log-dir", str(out / "node-logs")]
    if smoke:
        command += ["--resolution", "64x128", "--frame-size", "64x128", "--frames", "3", "--warmup", "1",
                    "--alone-frames", "3", "--rate-resolution", "64x128", "--rate-frame-size", "64x128",
                    "--rate-duration", "1"]
    else:
        command += ["--frames", "10", "--alone-frames", "10", "--rate-duration", "4"]
    return command


def run_part(name: str, arguments: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """Run one part as its own process, its output in ``<out>/<name>.log``; returns what summary.json keeps."""
    before = load_average()
    started = time.monotonic()
    log = out / f"{name}.log"
    print(f"[{name}] rtseg {shlex.join(arguments)}", flush=True)
    with log.open("w") as handle:
        try:
            code = subprocess.run([*RTSEG, *arguments], stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.monotonic() - started
    after = load_average()
    print(f"[{name}] exit {code} after {seconds:.0f} s (load {before and before[0]:.2f} -> {after and after[0]:.2f});"
          f" log {log}", flush=True)
    return {"part": name, "command": "rtseg " + shlex.join(arguments), "exit": code, "seconds": round(seconds, 1),
            "load_before": before, "load_after": after, "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cpu_report"), help="Folder for every file written.")
    parser.add_argument("--smoke", action="store_true", help="Toy sizes, to check the script; figures meaningless.")
    parser.add_argument("--parts", default="bench-native,bench-avx2,node,toy-int8",
                        help="Comma-separated parts to run (default: all).")
    parser.add_argument("--part-timeout", type=float, default=600.0, help="Seconds before a part is stopped.")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.parts.split(","))
    machine = {"cpu": cpu_model(), "cores": usable_cores(), "isa_extensions": cpu_isa_extensions(),
               "load_average": load_average()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, ISA {' '.join(machine['isa_extensions'])}")
    warning = busy_warning(machine["load_average"], machine["cores"])
    if warning:
        print(f"WARNING: {warning}", flush=True)
    parts = []
    if "bench-native" in wanted:
        parts.append(run_part("bench-native", bench_command(out, "bench-native", smoke=args.smoke, isa_limit=None,
                                                            profile=True, benchmark_app_s=2 if args.smoke else 5),
                              out, args.part_timeout))
    if "bench-avx2" in wanted:
        parts.append(run_part("bench-avx2", bench_command(out, "bench-avx2", smoke=args.smoke, isa_limit="avx2",
                                                          profile=True, benchmark_app_s=0), out, args.part_timeout))
    if "node" in wanted:
        parts.append(run_part("node", node_command(out, smoke=args.smoke), out, args.part_timeout))
    if "toy-int8" in wanted:
        from rtseg_ros.nets.weights import TOY_MODEL, WeightsError, resolve_weights

        try:  # where every command finds it: shipped in models/, else the user's cache
            toy = resolve_weights(TOY_MODEL)
        except WeightsError as exc:
            parts.append({"part": "toy-int8", "exit": "skipped", "reason": str(exc)})
            print(f"[toy-int8] skipped: {exc}", flush=True)
        else:
            parts.append(run_part("toy-int8", bench_command(
                out, "toy-int8", smoke=args.smoke, isa_limit=None, profile=False, benchmark_app_s=0,
                models=("atonet",), scales=("1,2,3,4",), weights=(f"atonet={toy}",)), out, args.part_timeout))
    summary = {"machine": machine, "smoke": args.smoke, "parts": parts, "load_average_at_end": load_average()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'summary.json'}; total {sum(p.get('seconds', 0) for p in parts):.0f} s")
    return 0 if all(p["exit"] in (0, "skipped") for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
