"""``rtseg train``: train or fine-tune a model from a recipe (one process, or many under torchrun)."""
from __future__ import annotations

import logging

import click
import yaml

from rtseg_ros.training.recipe import builtin_recipes


@click.command("train")
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set optim.lr=0.01 --set data.root=/data/cityscapes "
                   "(repeatable; values are YAML).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a run's last.pth (same recipe, same number of processes).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many iterations in total, leaving last.pth to resume from.")
@click.option("--show", is_flag=True, help="Print the recipe after overrides and exit.")
@click.option("--list", "list_recipes", is_flag=True, help="List the built-in recipes and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def train(recipe: str | None, overrides: tuple[str, ...], resume: str | None, stop_after: int | None, show: bool,
          list_recipes: bool, verbose: bool) -> None:
    """Train with RECIPE: a built-in name (see --list) or a YAML file.

    Multi-GPU: torchrun --nproc_per_node=N $(which rtseg) train RECIPE ...
    """
    if list_recipes:
        click.echo("\n".join(builtin_recipes()))
        return
    if recipe is None:
        raise click.UsageError(f"give a recipe: one of {', '.join(builtin_recipes())}, or a YAML file")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so that --list and --help do not load torch.
    from rtseg_ros.training.recipe import load_recipe
    from rtseg_ros.training.checkpoints import RESUME_FILE
    from rtseg_ros.training.trainer import run_training

    try:
        loaded = load_recipe(recipe, overrides)
        if show:
            click.echo(yaml.safe_dump(loaded, sort_keys=False))
            return
        result = run_training(loaded, resume=resume, stop_after=stop_after)
    except (ValueError, FileNotFoundError) as error:
        # Recipe, data set, label, checkpoint and weights errors: all ValueError subclasses with a reason.
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    if result.final_weights is not None:
        click.echo(f"weights: {result.final_weights} (best: {result.best_weights}, best mIoU {result.best_miou:.4f})")
    else:
        click.echo(f"stopped at iteration {result.iteration}; resume with --resume {result.output_dir / RESUME_FILE}")
