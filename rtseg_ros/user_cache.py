"""The one folder where rtseg_ros keeps what it makes for a user: engines, the toy model, weights.

Engines (exported, compiled, calibrated), the demo's toy model and its training run, and weight files
a user drops in ``models/`` all live under :func:`cache_dir`, so moving everything (a robot whose home
is on a small eMMC, a CI job) is one environment variable. Imports nothing heavy.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "models_dir", "expand_path"]


def cache_dir() -> Path:
    """``$RTSEG_ROS_CACHE``, else ``$XDG_CACHE_HOME/rtseg_ros``, else ``~/.cache/rtseg_ros``."""
    explicit = os.environ.get("RTSEG_ROS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rtseg_ros"


def models_dir() -> Path:
    """Weight files found by name (after ``$RTSEG_MODELS_DIR``, ``./models`` and the install's)."""
    return cache_dir() / "models"


def expand_path(text: str, **fields: str) -> Path:
    """A path written in a recipe or a setting: ``{cache}`` is :func:`cache_dir`, ``~`` the home folder,
    and each of ``fields`` (``{name}``: the recipe's name) its value."""
    return Path(str(text).format(cache=cache_dir(), **fields)).expanduser()
