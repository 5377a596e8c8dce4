"""``rtseg info``: parameters and GFLOPs of a model's inference graph."""
from __future__ import annotations

import json

import click

from rtseg_ros.cli.options import ALL_SCALES_TEXT, parse_scales, parse_size
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
def info(model_name: str, scales: str, size: str, num_classes: int, as_json: bool) -> None:
    """Parameters and GFLOPs of a model's inference graph (batch 1, no weights needed).

    Example: rtseg info --model mfaranet --scales 2 --size 1024x2048
    """
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
