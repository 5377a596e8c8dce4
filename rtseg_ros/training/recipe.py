"""Training recipes: YAML files over a fixed schema, plus dotted command-line overrides.

A recipe is a built-in name (``mfaranet_cityscapes``, ``atonet_cityscapes``, ``atonet_camvid``,
``synthetic``; the files in ``rtseg_ros/training/recipes/``) or a path to a YAML file. Its values
are laid over :data:`DEFAULTS`, so every recipe has every key; an override such as
``optim.lr=0.01`` must name an existing key (a typo is an error, not a silently ignored setting) and
its value is parsed as YAML (``0.01``, ``[512, 1024]``, ``null``, ``true``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from rtseg_ros.names import ALL_SCALES, MODEL_NAMES

__all__ = ["DEFAULTS", "RECIPE_DIR", "RecipeError", "apply_overrides", "builtin_recipes", "load_recipe",
           "validate_recipe"]

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class RecipeError(ValueError):
    """A recipe file or override is missing, malformed, or holds an invalid value."""


# Every key a recipe may set, with its default. The comments in the YAML recipes say where each
# paper setting comes from; these defaults are neutral.
DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "model": {
        "name": "mfaranet",          # one of names.MODEL_NAMES: mfaranet | atonet
        "scales": list(ALL_SCALES),  # MFARANet scale heads fused by the attention (ATONet: keep the default)
        "label_set": "cityscapes",   # cityscapes | camvid: class names and colours saved with the weights
        "num_classes": None,         # None: the label set's count
    },
    "init": {
        "backbone": None,            # ImageNet ResNet-18 file (torchvision format, or the MFARANet deep-stem file)
        "weights": None,             # fine-tune from any checkpoint load_weights accepts (heads re-initialised
                                     # when the class count differs)
    },
    "data": {
        "dataset": "cityscapes",     # cityscapes | camvid | folder | synthetic
        "root": None,
        "train_split": "train",
        "val_split": "val",
        "label_map": None,           # folder only: {mask value: train id}
        "workers": 4,                # data loader worker processes per training process
        "val_size": None,            # [height, width] the validation images are resized to; None: as stored
        # synthetic only: scenes generated on the fly (validation takes the seeds after the training ones)
        "synthetic": {"train_count": 64, "val_count": 8, "height": 128, "width": 256, "first_seed": 0,
                      "min_object_width": None},
    },
    "augment": {
        "scale": [0.5, 2.0],
        "rotate": 0.0,
        "flip": True,
        "crop": [512, 1024],
        "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0},
    },
    "loss": {
        "ohem": False,
        "ohem_threshold": 0.7,
        "ohem_min_kept": 100000,
        "scale_weight": 1.0,         # MFARANet: weight of each scale head's loss
        "aux_heads": [3, 4, 5],      # ATONet: auxiliary classifiers used
        "aux_weight": 1.0,           # ATONet: weight of each auxiliary loss
    },
    "optim": {
        "optimizer": "sgd",          # sgd (both papers) | adamw
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "nesterov": False,
        "backbone_lr_mult": 1.0,     # learning-rate factor of the encoder's parameters
        "decoder_lr_mult": 1.0,      # learning-rate factor of everything else
        "backbone_wd_mult": 1.0,     # weight-decay factor of the encoder's parameters
        "schedule": "poly",          # poly (per iteration) | cosine (per epoch) | constant
        "power": 0.9,                # poly exponent
        "min_lr": 0.0,               # cosine floor
    },
    "train": {
        "epochs": 100,
        "iterations": None,          # total iterations instead of epochs (the epoch length still sets the order)
        "batch_size": 8,             # global batch, split evenly over the processes
        "amp": True,                 # float16 autocast on CUDA (ignored on CPU)
        "sync_bn": True,             # SyncBatchNorm when running distributed on CUDA
        "deterministic": False,      # torch.use_deterministic_algorithms(True)
        "seed": 0,
        "device": "auto",            # auto | cpu | cuda | cuda:N
        "threads": None,             # CPU threads per process (torch.set_num_threads); None: torch's default
    },
    "val": {
        "every_epochs": 1,           # validate every N epochs (0: only at the end)
        "every_iterations": None,    # ...or every N iterations
        "batch_size": 1,
    },
    "checkpoint": {
        "every_iterations": None,    # resume file every N iterations (always at the end of an epoch)
    },
    "output": {
        "dir": "runs/{name}",        # {name} becomes the recipe name
        "weights": None,             # also copy the final weights here (e.g. for the demo)
        "weights_fp16": False,       # that copy in fp16 (half the size; the shipped toy model)
        "log_every": 20,             # iterations between training log lines / CSV rows
        "tensorboard": True,         # when tensorboard is importable
        "progress": True,            # tqdm progress bar
    },
}


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise RecipeError(f"unknown recipe key {dotted!r}; known at this level: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key != "label_map":
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {dotted!r} must be a mapping, got {value!r}")
            _merge(base[key], value, dotted + ".")
        else:
            base[key] = value


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a built-in recipe or a YAML file, apply ``key.sub=value`` overrides, and validate.

    Raises:
        RecipeError: unknown recipe, unreadable YAML, unknown key or invalid value.
    """
    path = Path(name_or_path).expanduser()
    if not path.suffix and not path.exists():
        builtin = RECIPE_DIR / f"{name_or_path}.yaml"
        if not builtin.exists():
            raise RecipeError(f"no recipe {str(name_or_path)!r}: give a YAML file or one of {', '.join(builtin_recipes())}")
        path = builtin
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path} must hold a mapping at the top level")
    recipe = copy.deepcopy(DEFAULTS)
    recipe["name"] = path.stem
    _merge(recipe, content)
    apply_overrides(recipe, overrides)
    validate_recipe(recipe)
    return recipe


def apply_overrides(recipe: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``section.key=value`` entries in place (values parsed as YAML) and return the recipe."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise RecipeError(f"override {item!r}: cannot parse value: {error}") from None
        update: dict[str, Any] = {}
        node = update
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            node[key] = {}
            node = node[key]
        node[keys[-1]] = value
        _merge(recipe, update)
    return recipe


def _pair(value: Any, what: str) -> None:
    if value is None:
        return
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and v > 0 for v in value)):
        raise RecipeError(f"{what} must be a pair of positive numbers, got {value!r}")


def validate_recipe(recipe: dict[str, Any]) -> None:
    """Check value types and ranges (the model and data set names are checked when they are built).

    Raises:
        RecipeError: with the key and the reason.
    """
    model, data, augment, optim, train = (recipe[k] for k in ("model", "data", "augment", "optim", "train"))
    if model["name"] not in MODEL_NAMES:
        raise RecipeError(f"model.name must be {' or '.join(MODEL_NAMES)}, got {model['name']!r}")
    if data["dataset"] not in ("cityscapes", "camvid", "folder", "synthetic"):
        raise RecipeError(f"data.dataset must be cityscapes, camvid, folder or synthetic, got {data['dataset']!r}")
    _pair(augment["scale"], "augment.scale")
    _pair(augment["crop"], "augment.crop")
    _pair(data["val_size"], "data.val_size")
    if model["name"] == "atonet":
        for key in ("crop", "val_size"):
            size = augment["crop"] if key == "crop" else data["val_size"]
            if size is not None and any(int(v) % 16 for v in size):
                raise RecipeError(f"ATONet needs sizes that are multiples of 16; {key} is {size}")
    if optim["optimizer"] not in ("sgd", "adamw"):
        raise RecipeError(f"optim.optimizer must be sgd or adamw, got {optim['optimizer']!r}")
    if optim["schedule"] not in ("poly", "cosine", "constant"):
        raise RecipeError(f"optim.schedule must be poly, cosine or constant, got {optim['schedule']!r}")
    for key in ("lr", "backbone_lr_mult", "decoder_lr_mult"):
        if not isinstance(optim[key], (int, float)) or optim[key] < 0:
            raise RecipeError(f"optim.{key} must be a non-negative number, got {optim[key]!r}")
    if train["iterations"] is None and (not isinstance(train["epochs"], int) or train["epochs"] < 1):
        raise RecipeError(f"train.epochs must be a positive integer, got {train['epochs']!r}")
    if train["iterations"] is not None and (not isinstance(train["iterations"], int) or train["iterations"] < 1):
        raise RecipeError(f"train.iterations must be a positive integer or null, got {train['iterations']!r}")
    if not isinstance(train["batch_size"], int) or train["batch_size"] < 1:
        raise RecipeError(f"train.batch_size must be a positive integer, got {train['batch_size']!r}")
    if not isinstance(data["workers"], int) or data["workers"] < 0:
        raise RecipeError(f"data.workers must be an integer >= 0, got {data['workers']!r}")
