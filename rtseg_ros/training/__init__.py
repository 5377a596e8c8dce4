"""Training and fine-tuning of MFARANet and ATONet with the papers' losses (``rtseg train``).

>>> from rtseg_ros.training import load_recipe, run_training
>>> result = run_training(load_recipe("synthetic", ["train.iterations=50"]))

Modules, laid out as torchvision's ``references/segmentation``: ``recipe`` (YAML recipes and
overrides; torch-free), ``losses``, ``transforms`` (augmentation), ``data`` (torch data sets, the
resumable sampler, the loaders), ``optim`` (optimizer and schedule), ``loop`` (``train_one_epoch``
and ``evaluate``), ``distributed`` (process group, device, DDP), ``checkpoints`` (the run's weight
files, resume), ``metrics_log`` (CSV, TensorBoard, progress bar) and ``trainer``, which puts them
together.
"""
from __future__ import annotations

from typing import Any

from rtseg_ros.training.recipe import RecipeError, builtin_recipes, load_recipe

# Names that pull in torch, and their modules: imported on first use, so listing recipes stays instant.
_LAZY = {"CheckpointError": "checkpoints", "TrainResult": "trainer", "Trainer": "trainer",
         "run_training": "trainer"}

__all__ = ["RecipeError", "builtin_recipes", "load_recipe", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"rtseg_ros.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
