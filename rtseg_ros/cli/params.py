"""``rtseg params``: the segmentation node's parameters as a Markdown table, from ``names.PARAMETERS``.

The README's parameter table is this command's output, so it cannot drift from what the node
declares. Imports neither torch nor rclpy.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import click

from rtseg_ros.names import PARAMETERS, ParameterSpec

__all__ = ["TABLE_HEADER", "parameter_table", "params"]

TABLE_HEADER = ("parameter", "default", "allowed", "at run time", "meaning")


def _default(spec: ParameterSpec) -> str:
    # As a params file writes it: text bare (empty as ""), everything else as YAML/JSON (true, [1, 2]).
    if isinstance(spec.default, str):
        return spec.default or '""'
    return json.dumps(spec.default)


def _allowed(spec: ParameterSpec) -> str:
    if spec.choices:
        return ", ".join(spec.choices)
    if spec.integer_range is not None:
        low, high = spec.integer_range
        if isinstance(spec.default, list):
            return f"subsets of {low}..{high}"
        return f"{low}..{high}, multiples of {spec.integer_step}" if spec.integer_step else f"{low}..{high}"
    if spec.float_range is not None:
        return f"{spec.float_range[0]}..{spec.float_range[1]}"
    return ""


def _at_run_time(spec: ParameterSpec) -> str:
    if spec.read_only:
        return "start-up only"
    return "rebuilds the engine" if spec.rebuilds_engine else "immediately"


def parameter_table(parameters: Mapping[str, ParameterSpec] = PARAMETERS) -> str:
    """The Markdown table of ``parameters``: name, default, allowed values, when a change applies, meaning."""
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [row(TABLE_HEADER), "|" + "---|" * len(TABLE_HEADER)]
    for name, spec in parameters.items():
        lines.append(row((f"`{name}`", f"`{_default(spec)}`", _allowed(spec), _at_run_time(spec), spec.description)))
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def params() -> None:
    """Print the segmentation node's parameters as a Markdown table.

    Every parameter is also a launch argument of the same name (`ros2 launch rtseg_ros
    segmentation.launch.py NAME:=VALUE`) and can be set in a params file or with `-p NAME:=VALUE`.
    """
    click.echo(parameter_table(), nl=False)
