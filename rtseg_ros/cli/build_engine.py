"""``rtseg build-engine``: build and cache the engines a node configuration needs, then exit.

A robot then starts from a warm cache: the node's Segmenter finds every engine it needs for its
camera (labels, and labels with confidence) and logs each cache hit with its load time, instead of
exporting, compiling or calibrating for seconds to minutes before its first frame. The settings are
the node's own: a ROS params file (``config/*.yaml``) and ``-p NAME=VALUE`` overrides, read with the
node's parameter table, so what is built is exactly what the node will look up.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from rtseg_ros.cli.options import parse_parameter, parse_size
from rtseg_ros.names import PACKAGE


def _params_file(path: str) -> Path:
    """``path`` itself, or a file of the package's ``config/`` folder by name (``cpu.yaml``)."""
    from rtseg_ros.ros.node_process import package_file

    given = Path(path).expanduser()
    if given.is_file():
        return given
    shipped = package_file(f"config/{given.name}")
    if shipped.is_file():
        return shipped
    raise click.BadParameter(f"no params file {path} (nor config/{given.name} in the package)")


def _show_package_logs() -> None:
    """Print this package's INFO lines (engine builds, cache hits, the backend chosen) and only warnings
    from other libraries: at INFO the ONNX exporter's own libraries (onnx_ir, onnxscript) log a line per
    graph rewrite, hundreds per export, which tell a user nothing."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(PACKAGE).setLevel(logging.INFO)


class _CacheHits(logging.Handler):
    """Counts the engine cache's hit and build lines while a variant is prepared."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.hits = 0
        self.builds = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("loaded cached"):
            self.hits += 1
        elif message.startswith("building"):
            self.builds += 1


@click.command("build-engine", context_settings={"show_default": True})
@click.argument("params_file", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a node parameter, after the params file (repeatable; values are YAML), "
                   "e.g. -p backend=openvino -p precision=int8 -p calibration_data=frames/.")
@click.option("--camera-size", default=None, metavar="HEIGHTxWIDTH",
              help="The camera's frame size; needed when labels are published at the frame size "
                   "(output_resolution: input).")
@click.option("--node-name", default=None, help="Node name whose section of the params file applies "
                                                "(default: the package's node name).")
@click.option("--labels-only", is_flag=True, help="Skip the labels+confidence engine (built by default, "
                                                  "since a confidence subscriber needs it).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Engine cache (default: the engine_cache_dir parameter, else $RTSEG_ROS_CACHE or "
                   "~/.cache/rtseg_ros).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads while building.")
def build_engine(params_file: str | None, params: tuple[str, ...], camera_size: str | None, node_name: str | None,
                 labels_only: bool, cache_dir: str | None, threads: int | None) -> None:
    """Build and cache the engines that PARAMS_FILE's node needs for one camera size, then exit.

    \b
    rtseg build-engine cpu.yaml --camera-size 1024x2048
    rtseg build-engine config/mfaranet_cityscapes.yaml -p backend=openvino -p precision=int8 \\
        -p calibration_data=~/frames --camera-size 1024x2048
    """
    import dataclasses

    from rtseg_ros.names import NODE_NAME

    _show_package_logs()
    values: dict[str, Any] = {}
    if params_file is not None:
        from rtseg_ros.ros.node_process import read_params_file

        try:
            values.update(read_params_file(_params_file(params_file), node_name or NODE_NAME))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    values.update(parse_parameter(item) for item in params)

    from rtseg_ros.engines import ConfigError, SegmenterConfig

    try:
        config = SegmenterConfig.from_parameters(values)
        if config.weights:
            from rtseg_ros.nets import WeightsError
            from rtseg_ros.nets.weights import resolve_weights

            try:
                config = dataclasses.replace(config, weights=str(resolve_weights(config.weights)))
            except WeightsError as exc:
                raise ConfigError(str(exc)) from None
        if cache_dir is not None:
            config = dataclasses.replace(config, cache_dir=cache_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.output_resolution == "input":
        if camera_size is None:
            raise click.UsageError("labels are published at the camera's frame size (output_resolution: input): "
                                   "give --camera-size HEIGHTxWIDTH")
        frame_size = parse_size(camera_size)
    else:
        frame_size = config.network_size

    import torch

    from rtseg_ros.engines import Segmenter

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        segmenter = Segmenter(config)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(f"cannot build the segmenter: {exc}") from None
    resolved = segmenter.config
    click.echo(f"{resolved.model} {resolved.backend} {resolved.precision} on {resolved.device}, input "
               f"{resolved.input_height}x{resolved.input_width}, labels at "
               f"{'x'.join(map(str, segmenter.output_size(frame_size)))}; "
               f"cache {resolved.resolved_cache_dir()}")
    if resolved.backend == "torch":
        click.echo("the torch backend runs eagerly: nothing to build or cache")
    if resolved.weights is None:
        # Engines are keyed by the weights' hash; without weights they are the fixed-seed random ones
        # (RANDOM_WEIGHTS_SEED), the same at every start, so what is built here is reused. Still untrained.
        click.secho("WARNING: no weights set: these engines run UNTRAINED random weights (fixed seed, so a node "
                    "without weights reuses them) and their labels are meaningless; set the weights parameter "
                    "for real use", fg="red", err=True)
    counter = _CacheHits()
    cache_log = logging.getLogger("rtseg_ros.engines.cache")
    level = cache_log.level
    cache_log.setLevel(min(cache_log.getEffectiveLevel(), logging.INFO))  # the counter needs the INFO lines
    cache_log.addHandler(counter)
    try:
        for with_confidence in (False,) if labels_only else (False, True):
            hits, builds = counter.hits, counter.builds
            variant_started = time.perf_counter()
            try:
                segmenter.warmup(frame_size, want_confidence=with_confidence)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            seconds = time.perf_counter() - variant_started
            outcome = ("built" if counter.builds > builds else "loaded from the cache" if counter.hits > hits
                       else "ready")
            click.echo(f"  {'labels+confidence' if with_confidence else 'labels'}: {outcome} in {seconds:.1f} s")
    finally:
        cache_log.removeHandler(counter)
        cache_log.setLevel(level)
    click.echo(f"done in {time.perf_counter() - started:.1f} s; a node with these settings now starts from the cache")
