"""``rtseg bench``: latency matrix of the Segmenter backends against the authors'-style baseline;
``rtseg bench node``: what the segmentation node adds around its Segmenter (:mod:`rtseg_ros.benchmarks.node`)."""
from __future__ import annotations

import logging
import shlex
import sys

import click

from rtseg_ros.cli.options import ALL_SCALES_TEXT, output_resolution_callback, parse_scales, parse_size
from rtseg_ros.names import BACKENDS, MODEL_NAMES, OUTPUT_RESOLUTIONS, PRECISIONS

SIZE_HELP = "HEIGHTxWIDTH, e.g. 512x1024"


def _weights(values: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not MODEL=PATH")
        mapping[name] = path
    return mapping


class BenchGroup(click.Group):
    """``rtseg bench [OPTIONS]`` runs the engine matrix; ``rtseg bench node ...`` the node benchmark.

    The node command is made on first use: it is built by :mod:`rtseg_ros.benchmarks.node`, which
    imports rclpy when it runs, and ``rtseg bench --help`` must not.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["node"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "node":
            return None
        from rtseg_ros.benchmarks.node import _cli

        return _cli()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([("node", "Overhead of the segmentation node around its Segmenter, and the "
                                         "highest camera rate it serves (rtseg bench node --help).")])


@click.group(cls=BenchGroup, invoke_without_command=True, context_settings={"show_default": True})
@click.option("--model", "models", multiple=True, default=(MODEL_NAMES[0],), type=click.Choice(MODEL_NAMES),
              help="Network(s) to measure (repeat the option for several).")
@click.option("--resolution", "resolutions", multiple=True, default=("512x1024",),
              help=f"Network input size(s), {SIZE_HELP}.")
@click.option("--scales", "scales", multiple=True, default=(ALL_SCALES_TEXT,),
              help=f"MFARANet stage set(s), e.g. {ALL_SCALES_TEXT} (full) or 2 (pruned).")
@click.option("--backend", "backends", multiple=True, default=BACKENDS, type=click.Choice(BACKENDS),
              help="Backend(s); those this machine cannot run are listed as skipped.")
@click.option("--precision", "precisions", multiple=True, default=(PRECISIONS[0],), type=click.Choice(PRECISIONS),
              help="Precision(s).")
@click.option("--device", default="cpu", help="cpu, cuda or cuda:N; gpu, gpu.N or npu: Intel (openvino only).")
@click.option("--frame-size", default="1024x2048",
              help=f"Camera frame size fed to both pipelines ({SIZE_HELP}), or 'network' for the network size.")
@click.option("--output-resolution", default=OUTPUT_RESOLUTIONS[0], callback=output_resolution_callback,
              help="Labels at the frame's size (input), the network's (network) or a fixed WIDTHxHEIGHT "
                   "(width first, as the node parameter output_resolution: 640x480).")
@click.option("--confidence/--no-confidence", default=False, help="Also compute and download confidence.")
@click.option("--warmup", default=2, type=click.IntRange(min=0), help="Untimed frames per row after building.")
@click.option("--iters", default=10, type=click.IntRange(min=1), help="Timed frames per row.")
@click.option("--weights", "weights", multiple=True, metavar="MODEL=PATH",
              help="Checkpoint per model (random weights otherwise; timing does not depend on them).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch and ONNX Runtime.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Engine cache folder.")
@click.option("--calibration-data", type=click.Path(exists=True), default=None,
              help="int8 calibration frames (a folder of images, a video or a rosbag2); default: synthetic "
                   "scenes written to the cache.")
@click.option("--calibration-frames", default=64, type=click.IntRange(min=1), help="Frames int8 calibrates on.")
@click.option("--isa-limit", type=click.Choice(("avx2", "avx512")), default=None,
              help="Cap torch's and OpenVINO's CPU kernels at this instruction set (oneDNN's ONEDNN_MAX_CPU_ISA, "
                   "torch's ATEN_CPU_CAPABILITY), to measure a smaller CPU's kernels here; recorded in the JSON. "
                   "OpenVINO's own interpolate/reduce/TopK kernels and ONNX Runtime ignore it (see docs/openvino.md).")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False), default=None,
              help="Also write OpenVINO's per-layer profile of every openvino row, grouped by network part "
                   "(Markdown + JSON), into this folder.")
@click.option("--profile-iters", default=10, type=click.IntRange(min=1), help="Inferences each profile takes.")
@click.option("--benchmark-app", "benchmark_app_seconds", default=0.0, type=click.FloatRange(min=0),
              help="Also run OpenVINO's benchmark_app this many seconds on every openvino row's model, between "
                   "two batches of our own frames, and report our forward time against its latency (0: off).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the table, with the command and the machine, as Markdown here.")
@click.pass_context
def bench(ctx: click.Context, models, resolutions, scales, backends, precisions, device, frame_size,
          output_resolution, confidence, warmup, iters, weights, threads, cache_dir, calibration_data,
          calibration_frames, isa_limit, profile_dir, profile_iters, benchmark_app_seconds, json_path,
          markdown_path) -> None:
    """Latency/FPS/memory matrix over models, resolutions, scales, backends and precisions.

    The rows of one model, resolution and scales run in one loop with the authors'-style pipeline:
    every frame goes through the baseline and each engine in turn. Each row reports its speed-up over
    the baseline as the median and interquartile range of the per-frame ratios, its pre/post share,
    and for int8 its label agreement with fp32 on the same frames.

    \b
    rtseg bench --model mfaranet --backend torch --backend onnxruntime --backend openvino \\
        --precision fp32 --precision int8 --json bench.json --markdown bench.md
    """
    if ctx.invoked_subcommand is not None:  # rtseg bench node: its options are its own
        return
    if isa_limit is not None:
        import os

        from rtseg_ros.machine import isa_limit_environment

        if "torch" in sys.modules or "openvino" in sys.modules:
            raise click.UsageError("--isa-limit must be set before torch and openvino load; run rtseg bench directly")
        os.environ.update(isa_limit_environment(isa_limit))  # read by oneDNN and ATen when they load, below
    import torch

    from rtseg_ros.benchmarks.engines import (
        BenchSettings,
        expand_matrix,
        format_table,
        isa_text,
        machine_info,
        prepare_calibration,
        run_matrix,
        skip_reason,
        write_markdown,
        write_report,
    )
    from rtseg_ros.machine import busy_warning, load_average

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if threads is not None:
        torch.set_num_threads(threads)
    settings = BenchSettings(
        frame_size=None if frame_size == "network" else parse_size(frame_size),
        output_resolution=output_resolution, warmup=warmup, iters=iters, weights=_weights(weights),
        cache_dir=cache_dir, want_confidence=confidence, calibration_data=calibration_data,
        calibration_frames=calibration_frames)
    cases = expand_matrix(models, [parse_size(r) for r in resolutions], [parse_scales(s) for s in scales], backends,
                          precisions, device)
    machine = machine_info()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
               f"GPU {machine['gpu'] or 'none'}; torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, "
               f"openvino {machine['openvino'] or '-'}, torch_tensorrt {machine['torch_tensorrt'] or '-'}; "
               f"load average {machine['load_average'][0]:.2f}")
    click.echo(f"{isa_text(machine)}")
    warning = busy_warning(machine["load_average"], machine["cores"])
    if warning:
        click.echo(f"WARNING: {warning}", err=True)
    rows, skipped = [], []
    for case, outcome in run_matrix(cases, settings):
        label = f"{case.model} {case.height}x{case.width} scales={','.join(map(str, case.scales))} " \
                f"{case.backend} {case.precision} {case.device}"
        if isinstance(outcome, str):
            skipped.append({"case": label, "reason": outcome})
            click.echo(f"skipped {label}: {outcome}")
            continue
        rows.append(outcome)
        click.echo(f"{label}: e2e {outcome['e2e_ms_median']:.1f} ms (p95 {outcome['e2e_ms_p95']:.1f}), "
                   f"baseline {outcome['baseline_e2e_ms_median']:.1f} ms, "
                   f"ours/baseline {outcome['ours_over_baseline']:.2f}, per-frame speed-up "
                   f"{outcome['speedup_pairs_median']:.2f}x (IQR {outcome['speedup_pairs_iqr'][0]:.2f}-"
                   f"{outcome['speedup_pairs_iqr'][1]:.2f})"
                   + (f", labels = fp32 on {outcome['label_agreement_vs_fp32']:.2%}"
                      if outcome.get("label_agreement_vs_fp32") is not None else ""))
    click.echo("")
    click.echo(format_table(rows) if rows else "no rows could run on this machine")
    extra = {}
    if profile_dir is not None or benchmark_app_seconds > 0:
        from rtseg_ros.benchmarks.openvino_profile import openvino_reports

        prepared = prepare_calibration(cases, settings)
        measured = [case for case in cases if case.backend == "openvino" and skip_reason(case, prepared) is None]
        extra["openvino_reports"] = openvino_reports(
            measured, prepared, profile_dir=profile_dir, profile_iters=profile_iters,
            benchmark_app_seconds=benchmark_app_seconds, echo=click.echo)
    warning = busy_warning(load_average(), machine["cores"])
    if warning:
        click.echo(f"WARNING at the end: {warning}", err=True)
    command = " ".join(["rtseg bench", *(shlex.quote(a) for a in sys.argv[2:])])
    if json_path:
        write_report(json_path, rows, skipped, settings, command, machine, extra)
        click.echo(f"wrote {json_path}")
    if markdown_path:
        write_markdown(markdown_path, rows, skipped, command, machine)
        click.echo(f"wrote {markdown_path}")
