"""Reading, converting and writing network weights.

This is the only module that knows the authors' parameter names. It accepts:

* our own files (``save_weights``): ``{"format": "rtseg_ros/1", "model", "num_classes", "scales",
  "label_set", "state_dict", ...}``, or a bare state_dict with our names;
* the MFARANet authors' checkpoints: ``{"epoch", "state_dict", "optimizer"}`` with ``module.`` prefixes,
  from class ``MFARANet`` (``layerN.<block>``, ``HMSA_attentions``) or ``MFARANet_Scale_Choice``
  (``layerN.0.<block>``, ``ASFM_attentions``), with training-only boundary heads, auxiliary head and loss
  weights, which are ignored;
* the ATONet authors' bare state_dicts (auxiliary classifiers are used only by models built with
  ``training_heads=True``).

Files are read with ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and plain
containers. Half-precision files are cast to the model's dtype.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rtseg_ros.io.files import atomic_output, file_sha256

LOG = logging.getLogger(__name__)

FORMAT = "rtseg_ros/1"
WHERE_WEIGHTS_GO = (
    "put weight files in models/ (models/manifest.yaml lists the authors' released checkpoints "
    "and where to download them) or pass a full path"
)
# Wrapper keys used by training scripts around the state_dict, outermost first.
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict", "network")


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did.

    Attributes:
        source: ``"rtseg_ros"``, ``"mfaranet-official"`` or ``"atonet-official"``.
        loaded: model keys set from the file.
        ignored: file keys the model does not use (training-only parts, modules pruned away).
        reinitialized: model keys left at their initial values because the class count differs
            (only with ``strict_classes=False``).
        checkpoint_classes: number of classes of the file.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    checkpoint_classes: int | None = None


# --------------------------------------------------------------------------------------------------
# Reading


def load_checkpoint_file(path: str | Path) -> Any:
    """Unpickle a checkpoint file safely (``weights_only=True``) onto the CPU.

    Raises:
        WeightsError: the file is missing, truncated, corrupt, or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; {WHERE_WEIGHTS_GO}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WeightsError(
            f"cannot read {path} as a PyTorch checkpoint (truncated, corrupt, or not a weights file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _unwrap_state_dict(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """Finds the state_dict inside training wrappers and strips DataParallel ``module.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state_dict")
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj, unwrapped = inner, True
                break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors or len(tensors) != len(obj):
        preview = ", ".join(map(str, list(obj)[:6]))
        raise WeightsError(f"{path} contains no state_dict of tensors (top-level keys: {preview})")
    state: dict[str, Tensor] = {}
    for key, value in tensors.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Returns the raw state_dict of a weight file (wrappers and ``module.`` prefixes removed, names
    unchanged)."""
    obj = load_checkpoint_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        obj = obj["state_dict"]
    return _unwrap_state_dict(obj, path)


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Metadata of one of our own files (everything but the state_dict); ``{}`` for other files."""
    obj = load_checkpoint_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return {k: v for k, v in obj.items() if k != "state_dict"}
    return {}


def weights_hash(path: str | Path) -> str:
    """sha256 (hex) of a weights file: the identity engine caches and reports record."""
    return file_sha256(path)


# --------------------------------------------------------------------------------------------------
# Upstream names -> ours

Rename = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _rules(*pairs: tuple[str, str | Callable[[re.Match[str]], str]]) -> list[Rename]:
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


_ENCODER_RULES = (
    (r"^layer0\.0\.", "encoder.conv1."),
    (r"^layer0\.1\.", "encoder.bn1."),
    (r"^layer([1-4])\.", r"encoder.layer\1."),
)

_MFARANET_RULES = _rules(
    *_ENCODER_RULES,
    (r"^channel_changes\.", "lateral_projections."),
    (r"^feature_fuses_up\.", "aggregation.top_down."),
    (r"^feature_fuses_down\.", "aggregation.bottom_up."),
    (r"^stage_fuses\.", "aggregation.merge."),
    (r"^stages_offset\.(\d+)\.channel_change1\.", r"alignments.\1.coarse_projection."),
    (r"^stages_offset\.(\d+)\.channel_change2\.", r"alignments.\1.fine_projection."),
    (r"^stages_offset\.(\d+)\.offset_map\.", r"alignments.\1.flow."),
    (r"^multi_loss_head\.(\d+)\.0\.", lambda m: f"scale_heads.scale{int(m[1]) + 1}."),
)
_MFARANET_TRAINING_ONLY = ("boundary_heads.", "aux_head.", "criterion.")
_MFARANET_ATTENTION = re.compile(r"^(?:HMSA|ASFM)_attentions\.(\d+)\.")
_SCALE_CHOICE_LAYER = re.compile(r"^layer([1-4])\.0\.(\d+\.)")

_ATONET_RULES = _rules(
    *_ENCODER_RULES,
    (r"^up([1-5])\.blend_conv\.", lambda m: f"projections.{int(m[1]) - 1}."),
    (r"^spp\.conv1\.", "context.input_projection."),
    (r"^spp\.features\.", "context.branches."),
    (r"^spp\.conv2\.", "context.output_projection."),
    (r"^final_ocnv\.", "fusion."),
    (r"^cls\.", "classifier."),
    (r"^aux_cls([1-5])\.", r"aux_classifiers.aux\1."),
)
_ATONET_TRAINING_ONLY = ("criterion.",)


def detect_source(state: Mapping[str, Tensor]) -> str:
    """``"rtseg_ros"``, ``"mfaranet-official"`` or ``"atonet-official"`` from a state_dict's names."""
    keys = list(state)
    if any(k.startswith("encoder.") for k in keys):
        return "rtseg_ros"
    if any(k.startswith(("channel_changes.", "multi_loss_head.", "stages_offset.")) for k in keys):
        return "mfaranet-official"
    if any(k.startswith(("up1.blend_conv.", "spp.", "final_ocnv.")) for k in keys):
        return "atonet-official"
    raise WeightsError(f"not an MFARANet or ATONet state_dict (first keys: {', '.join(keys[:5])})")


def _rename(key: str, rules: list[Rename]) -> str | None:
    for pattern, replacement in rules:
        if pattern.search(key):
            return pattern.sub(replacement, key, count=1)
    return None


def convert_official_mfaranet(
    state: Mapping[str, Tensor], model_scales: tuple[int, ...]
) -> tuple[dict[str, Tensor], list[str]]:
    """Renames an official MFARANet state_dict (either upstream class) to our names.

    Returns:
        (renamed state_dict, ignored training-only keys).

    Raises:
        WeightsError: keys no rule knows, or attention heads whose scales cannot be told.
    """
    if any(_SCALE_CHOICE_LAYER.match(k) for k in state):
        # MFARANet_Scale_Choice wraps each ResNet layer in a Sequential: layerN.0.<block> -> layerN.<block>.
        state = {_SCALE_CHOICE_LAYER.sub(r"layer\1.\2", k): v for k, v in state.items()}
    attention_ids = sorted({int(m[1]) for k in state if (m := _MFARANET_ATTENTION.match(k))})
    if len(attention_ids) == 4:
        attention_scales = {j: j + 1 for j in attention_ids}
    elif attention_ids and len(attention_ids) == len(model_scales):
        # Upstream numbers the attention heads by position among the chosen scales.
        attention_scales = dict(zip(attention_ids, model_scales))
    elif attention_ids:
        raise WeightsError(
            f"checkpoint has {len(attention_ids)} scale-attention heads, which cannot be matched to the "
            f"model's scales {model_scales}"
        )
    else:
        attention_scales = {}
    renamed: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(_MFARANET_TRAINING_ONLY):
            ignored.append(key)
            continue
        if match := _MFARANET_ATTENTION.match(key):
            renamed[f"fusion.attention.scale{attention_scales[int(match[1])]}." + key[match.end():]] = value
            continue
        new = _rename(key, _MFARANET_RULES)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        raise WeightsError(f"unknown keys in the MFARANet checkpoint: {preview_keys(unknown)}")
    return renamed, ignored


def convert_official_atonet(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Renames an official ATONet state_dict to our names; returns (renamed, ignored keys)."""
    renamed: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(_ATONET_TRAINING_ONLY):
            ignored.append(key)
            continue
        new = _rename(key, _ATONET_RULES)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        raise WeightsError(f"unknown keys in the ATONet checkpoint: {preview_keys(unknown)}")
    return renamed, ignored


# --------------------------------------------------------------------------------------------------
# Loading into a model


@functools.lru_cache(maxsize=8)
def _architecture_keys(model_name: str, num_classes: int) -> frozenset[str]:
    """Every parameter name the architecture can have (all scales, training heads included), so that
    keys of modules pruned away can be told from foreign keys. Built on the meta device: no memory."""
    from rtseg_ros.nets.builders import build_model

    with torch.device("meta"):
        full = build_model(model_name, num_classes, training_heads=True)
    return frozenset(full.state_dict())


def load_checkpoint(model: nn.Module, path: str | Path, *, strict_classes: bool = True) -> LoadReport:
    """Loads weights from ``path`` into ``model`` (built by ``build_model``) and reports what happened.

    Raises:
        WeightsError: missing/unreadable file, another network's weights, missing or unknown keys, or a
            class-count mismatch (unless ``strict_classes=False``, which leaves the class-dependent layers
            at their initial values instead).
    """
    name = getattr(model, "model_name", None)
    if name is None:
        raise TypeError(f"load_weights expects a model from build_model, got {type(model).__name__}")
    obj = load_checkpoint_file(path)
    meta: Mapping[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = obj
        if meta.get("model") != name:
            raise WeightsError(f"{path} holds {meta.get('model')!r} weights, the model is {name!r}")
        obj = obj.get("state_dict")
    state = _unwrap_state_dict(obj, path)
    source = detect_source(state)
    ignored: list[str] = []
    if source == "mfaranet-official":
        if name != "mfaranet":
            raise WeightsError(f"{path} holds MFARANet weights, the model is {name!r}")
        state, ignored = convert_official_mfaranet(state, model.scales)
    elif source == "atonet-official":
        if name != "atonet":
            raise WeightsError(f"{path} holds ATONet weights, the model is {name!r}")
        state, ignored = convert_official_atonet(state)

    own = model.state_dict()
    extra = [k for k in state if k not in own]
    known = _architecture_keys(name, model.num_classes) if extra else frozenset()
    foreign = [k for k in extra if k not in known]
    if foreign:
        raise WeightsError(f"{path} does not fit {name}: unexpected keys {preview_keys(foreign)}")
    if extra:
        LOG.debug("ignoring %d keys of modules this model does not build: %s", len(extra), preview_keys(extra))
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"{path} does not fit {name}: missing keys {preview_keys(missing)}")

    class_keys, checkpoint_classes = _class_mismatches(name, state, own)
    if meta.get("num_classes") not in (None, model.num_classes):
        checkpoint_classes = int(meta["num_classes"])
    if checkpoint_classes is not None and checkpoint_classes != model.num_classes and strict_classes:
        raise WeightsError(
            f"{path}: checkpoint has {checkpoint_classes} classes, model has {model.num_classes} "
            f"(build the model with num_classes={checkpoint_classes}, or fine-tune with strict_classes=False)"
        )
    wrong_shape = [
        k for k in own if k not in class_keys and state[k].shape != own[k].shape
    ]
    if wrong_shape:
        detail = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape[:5])
        raise WeightsError(f"{path} does not fit {name}: wrong shapes for {detail}")

    usable = {
        k: (state[k].to(own[k].dtype) if state[k].is_floating_point() else state[k])
        for k in own
        if k not in class_keys
    }
    model.load_state_dict(usable, strict=not class_keys)
    report = LoadReport(
        source=source,
        loaded=sorted(usable),
        ignored=sorted(ignored + extra),
        reinitialized=sorted(class_keys),
        checkpoint_classes=checkpoint_classes or model.num_classes,
    )
    if class_keys:
        LOG.warning(
            "checkpoint has %s classes, model has %d: kept the initial values of %s",
            checkpoint_classes, model.num_classes, ", ".join(report.reinitialized),
        )
    LOG.info("loaded %d tensors from %s (%s); %d ignored", len(usable), path, source, len(report.ignored))
    return report


@functools.lru_cache(maxsize=4)
def _class_dependent_keys(model_name: str) -> frozenset[str]:
    """Names of the tensors whose shape depends on the class count (classifiers, attention outputs)."""
    from rtseg_ros.nets.builders import build_model

    with torch.device("meta"):
        two = build_model(model_name, 2, training_heads=True).state_dict()
        three = build_model(model_name, 3, training_heads=True).state_dict()
    return frozenset(k for k in two if two[k].shape != three[k].shape)


def _class_mismatches(
    model_name: str, state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[list[str], int | None]:
    """Class-dependent keys whose shapes differ, and the file's class count (``None`` if they agree)."""
    dependent = _class_dependent_keys(model_name)
    keys = [k for k in own if k in dependent and state[k].shape != own[k].shape]
    return keys, (int(state[keys[0]].shape[0]) if keys else None)


def load_weights(model: nn.Module, path: str | Path, *, strict_classes: bool = True) -> nn.Module:
    """Loads our own or the authors' weights into ``model`` and returns it.

    Args:
        model: a model from ``build_model``.
        path: the weight file.
        strict_classes: if False, a class-count mismatch keeps the model's initial class-dependent layers
            (logged as a warning) instead of failing: the start of a fine-tuning run.

    Raises:
        WeightsError: see ``load_checkpoint``.
    """
    load_checkpoint(model, path, strict_classes=strict_classes)
    return model


# --------------------------------------------------------------------------------------------------
# Writing


def save_weights(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    label_set: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``model``'s weights in our format, atomically (temporary file + ``os.replace``).

    ``extra`` adds top-level entries (e.g. epoch, mIoU); use plain Python values and tensors so the file
    stays readable with ``weights_only=True``.
    """
    if model_name != getattr(model, "model_name", None):
        raise ValueError(f"model_name {model_name!r} does not match the model ({getattr(model, 'model_name', None)!r})")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": model_name,
        "num_classes": int(model.num_classes),
        "scales": list(model.scales),
        "label_set": label_set,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    clashes = sorted(set(extra or {}) & set(payload))
    if clashes:
        raise ValueError(f"extra entries would overwrite {clashes}")
    payload.update(extra or {})
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def preview_keys(keys: list[str], limit: int = 8) -> str:
    """``"a, b, c (+N more)"`` for error messages that name keys."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
