"""Training and fine-tuning of MFARANet and ATONet with the papers' losses (``rtseg train``).

>>> from rtseg_ros.training import load_recipe, run_training
>>> result = run_training(load_recipe("synthetic", ["train.iterations=50"]))

Modules: ``recipe`` (YAML recipes and overrides), ``losses``, ``transforms`` (augmentation),
``data`` (torch data sets and the resumable sampler), ``trainer`` (the loop, DDP, checkpoints).
"""
from __future__ import annotations

from typing import Any

from rtseg_ros.training.recipe import RecipeError, builtin_recipes, load_recipe

_TRAINER_NAMES = ("CheckpointError", "TrainResult", "Trainer", "run_training")

__all__ = ["RecipeError", "builtin_recipes", "load_recipe", *_TRAINER_NAMES]


def __getattr__(name: str) -> Any:
    # The trainer pulls in torch: imported on first use, so listing recipes stays instant.
    if name in _TRAINER_NAMES:
        from rtseg_ros.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
