"""Parsers for option values that several subcommands share (sizes, MFARANet scales, node parameters)."""
from __future__ import annotations

from typing import Any

import click

from rtseg_ros.names import ALL_SCALES, fixed_output_size

# The default of every --scales option: all of MFARANet's scales, as the option is written.
ALL_SCALES_TEXT = ",".join(map(str, ALL_SCALES))


def parse_size(value: str) -> tuple[int, int]:
    """Parse ``HEIGHTxWIDTH`` (e.g. ``512x1024``) into positive integers, or raise ``click.BadParameter``."""
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH such as 512x1024, got {value!r}") from None
    if height <= 0 or width <= 0:
        raise click.BadParameter(f"height and width must be positive, got {value!r}")
    return height, width


def parse_scales(value: str) -> tuple[int, ...]:
    """Parse MFARANet scales written ``2``, ``1,2,3,4`` or ``1 2``. Range checks belong to the model builder."""
    try:
        scales = tuple(int(part) for part in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected scales such as 2 or {ALL_SCALES_TEXT}, got {value!r}") from None
    if not scales:
        raise click.BadParameter(f"expected at least one scale, such as 2 or {ALL_SCALES_TEXT}")
    return scales


def size_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``click`` option callback around :func:`parse_size`; an absent option stays ``None``."""
    return None if value is None else parse_size(value)


def output_resolution_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``click`` option callback for ``--output-resolution``: the node parameter's forms (``input``,
    ``network`` or ``WIDTHxHEIGHT``, width first as in the parameter), checked by
    :func:`rtseg_ros.names.fixed_output_size`; the value stays text, as ``SegmenterConfig`` keeps it."""
    try:
        fixed_output_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def parse_parameter(item: str) -> tuple[str, Any]:
    """A ``-p NAME=VALUE`` (or ROS's ``NAME:=VALUE``) node parameter, its value typed as the parameter
    is (:meth:`rtseg_ros.names.ParameterSpec.parse`); raise ``click.BadParameter`` if it is not one."""
    from rtseg_ros.names import PARAMETERS

    name, sep, text = item.partition("=")
    name = name.rstrip(":")
    if not sep or not name:
        raise click.BadParameter(f"{item!r} is not NAME=VALUE")
    spec = PARAMETERS.get(name)
    if spec is None:
        raise click.BadParameter(f"unknown node parameter {name!r}; see `rtseg params`")
    return name, spec.parse(text) if text else ""
