"""The ``rtseg`` command line.

Subcommands live next to the code they drive and are imported only when invoked, so
``rtseg --help`` answers instantly and ``rtseg info`` never loads rclpy.
"""
from __future__ import annotations

import time

# When the `rtseg` command started, as near its first line as the package gets: `rtseg demo` counts
# the time to first labels from here. (Not the process's start time in /proc: a shell that runs the
# command last in `a && b && rtseg demo` execs it in its own process, whose start is the shell's.)
STARTED_MONOTONIC = time.monotonic()

import importlib  # noqa: E402
import signal  # noqa: E402

import click  # noqa: E402

from rtseg_ros import __version__  # noqa: E402

# name -> "module:attribute" of a click.Command.
SUBCOMMANDS: dict[str, str] = {
    "info": "rtseg_ros.cli.info:info",
    "bench": "rtseg_ros.cli.bench:bench",
    "build-engine": "rtseg_ros.cli.build_engine:build_engine",
    "make-bag": "rtseg_ros.cli.evaluate:make_bag",
    "eval": "rtseg_ros.cli.evaluate:evaluate",
    "train": "rtseg_ros.cli.train:train",
    "demo": "rtseg_ros.cli.demo:demo",
    "params": "rtseg_ros.cli.params:params",
}

SUMMARIES: dict[str, str] = {
    "info": "Parameters and GFLOPs of a model's inference graph.",
    "bench": "Latency/FPS/memory matrix over models, resolutions, backends and precisions.",
    "build-engine": "Build and cache the engines a node config needs for one camera size, then exit.",
    "make-bag": "Turn a Cityscapes or CamVid split into a rosbag2 with ground truth.",
    "eval": "Accuracy and latency of a model on a rosbag or a data set folder.",
    "train": "Train or fine-tune MFARANet / ATONet from a recipe.",
    "demo": "Run the segmentation node on a camera source and print live statistics.",
    "params": "The segmentation node's parameters as a Markdown table.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing summaries from a table avoids importing torch just to print --help.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in sorted(SUBCOMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtseg")
def main() -> None:
    """rtseg_ros: real-time semantic segmentation for ROS 2."""
    # SIGTERM (a supervisor, `timeout`, `kill`) unwinds like Ctrl-C, so the nodes a command started
    # (demo, live evaluation, bench node) are stopped by their harness instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
