"""Reading, checking and writing network weights; knows no network.

It accepts our own files (``save_weights``: ``{"format": "rtseg_ros/1", "model", "num_classes",
"scales", "label_set", "state_dict", ...}``, or a bare state_dict with our names) and the authors'
released checkpoints of any registered network, wrapped by their training scripts or not
(``state_dict``/``model``/``net`` wrappers, DataParallel ``module.`` prefixes). The authors'
parameter names are turned into ours by the checkpoint filter each network registers beside its
definition (:class:`~rtseg_ros.nets.base.UpstreamCheckpoint`); :class:`KeyMap` and
:func:`rename_state_dict` are the helpers those filters share.

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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rtseg_ros.io.files import atomic_output, file_sha256
from rtseg_ros.nets.base import SegmentationModel
from rtseg_ros.nets.registry import get_model_entry, list_models

if TYPE_CHECKING:
    from rtseg_ros.datasets.labels import LabelSet

LOG = logging.getLogger(__name__)

FORMAT = "rtseg_ros/1"
# Our files written with a LabelSet (``rtseg train``) also carry the whole set under this key, in the
# label set file format (LabelSet.to_dict), so that the weights alone say what their classes are.
# Files without it (older ones, or a label set given by name) are read by their ``label_set`` name.
LABEL_SET_DEFINITION = "label_set_definition"
OWN_SOURCE = "rtseg_ros"
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
        source: ``"rtseg_ros"`` (our names) or ``"<model>-official"`` (the authors' file).
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


def checkpoint_label_set(path: str | Path) -> tuple[LabelSet | None, int | None]:
    """The label set one of our checkpoints records and its class count.

    Returns:
        ``(label set, num_classes)``: the recorded definition, else the built-in set the recorded
        name stands for (when its class count agrees), else ``None``; ``(None, None)`` for the
        authors' files and bare state_dicts.

    Raises:
        WeightsError: the file cannot be read, or its recorded label set is malformed.
    """
    from rtseg_ros.datasets.labels import LABEL_SETS, LabelSet, LabelSetError

    info = read_checkpoint_info(path)
    if not info:
        return None, None
    classes = info.get("num_classes")
    classes = int(classes) if isinstance(classes, int) else None
    definition = info.get(LABEL_SET_DEFINITION)
    if definition is not None:
        try:
            return LabelSet.from_dict(definition, default_name=str(info.get("label_set") or "checkpoint")), classes
        except LabelSetError as exc:
            raise WeightsError(f"{path}: the label set it records is malformed: {exc}") from None
    builtin = LABEL_SETS.get(str(info.get("label_set") or "").lower())
    if builtin is not None and classes in (None, builtin.num_classes):
        return builtin, classes
    return None, classes


def weights_hash(path: str | Path) -> str:
    """sha256 (hex) of a weights file: the identity engine caches and reports record."""
    return file_sha256(path)


# --------------------------------------------------------------------------------------------------
# Renaming upstream keys (the maps themselves live beside each network)

Replacement = str | Callable[[re.Match[str]], str]


class KeyMap:
    """Ordered regular-expression renames of state_dict keys; the first pattern that matches wins.

    Args:
        rules: ``(pattern, replacement)`` pairs, as for ``re.sub`` (replacing the first match).
    """

    def __init__(self, *rules: tuple[str, Replacement]) -> None:
        self.rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def rename(self, key: str) -> str | None:
        """``key`` in our names, or ``None`` if no rule knows it."""
        for pattern, replacement in self.rules:
            if pattern.search(key):
                return pattern.sub(replacement, key, count=1)
        return None


def rename_state_dict(
    state: Mapping[str, Tensor], key_map: KeyMap, *, network: str, ignore: tuple[str, ...] = ()
) -> tuple[dict[str, Tensor], list[str]]:
    """Renames every key of ``state`` with ``key_map``; keys starting with an ``ignore`` prefix
    (training-only parts) are dropped.

    Returns:
        (renamed state_dict, ignored keys).

    Raises:
        WeightsError: keys neither ignored nor known to ``key_map``, named in the message.
    """
    renamed: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if ignore and key.startswith(ignore):
            ignored.append(key)
        elif (new := key_map.rename(key)) is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        raise WeightsError(f"unknown keys in the {network} checkpoint: {preview_keys(unknown)}")
    return renamed, ignored


# --------------------------------------------------------------------------------------------------
# Loading into a model


@functools.lru_cache(maxsize=8)
def _architecture_keys(model_class: type[SegmentationModel], num_classes: int) -> frozenset[str]:
    """Every parameter name the architecture can have (all scales, training heads included), so that
    keys of modules pruned away can be told from foreign keys. Built on the meta device: no memory."""
    with torch.device("meta"):
        full = model_class(num_classes, training_heads=True)
    return frozenset(full.state_dict())


def _to_model_names(
    state: dict[str, Tensor], model: SegmentationModel, path: str | Path
) -> tuple[dict[str, Tensor], list[str], str]:
    """Returns ``state`` in the model's names, the ignored keys, and the source (``rtseg_ros`` or
    ``<model>-official``), using the upstream layouts registered with the networks."""
    # A file in our names shares keys with the architecture; the authors' names never do.
    if _architecture_keys(type(model), model.num_classes).intersection(state):
        return state, [], OWN_SOURCE
    entries = [get_model_entry(name) for name in list_models()]
    for entry in entries:
        if entry.upstream is not None and entry.upstream.recognizes(state):
            if entry.name != model.model_name:
                raise WeightsError(f"{path} holds {entry.display_name} weights, the model is {model.model_name!r}")
            renamed, ignored = entry.upstream.filter_fn(state, model)
            return renamed, ignored, f"{entry.name}-official"
    networks = [entry.display_name for entry in entries]
    either = " or ".join(filter(None, [", ".join(networks[:-1]), networks[-1]]))
    raise WeightsError(f"not an {either} state_dict (first keys: {', '.join(list(state)[:5])})")


def load_checkpoint(model: SegmentationModel, path: str | Path, *, strict_classes: bool = True) -> LoadReport:
    """Loads weights from ``path`` into ``model`` (built by ``build_model``) and reports what happened.

    The file may be ours or the authors' (renamed by the upstream checkpoint filter registered with
    the model's network).

    Raises:
        WeightsError: missing/unreadable file, another network's weights, missing or unknown keys, or a
            class-count mismatch (unless ``strict_classes=False``, which leaves the class-dependent layers
            at their initial values instead).
    """
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"load_weights expects a model from build_model, got {type(model).__name__}")
    name = model.model_name
    obj = load_checkpoint_file(path)
    meta: Mapping[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = obj
        if meta.get("model") != name:
            raise WeightsError(f"{path} holds {meta.get('model')!r} weights, the model is {name!r}")
        obj = obj.get("state_dict")
    state, ignored, source = _to_model_names(_unwrap_state_dict(obj, path), model, path)

    own = model.state_dict()
    extra = [k for k in state if k not in own]
    known = _architecture_keys(type(model), model.num_classes) if extra else frozenset()
    foreign = [k for k in extra if k not in known]
    if foreign:
        raise WeightsError(f"{path} does not fit {name}: unexpected keys {preview_keys(foreign)}")
    if extra:
        LOG.debug("ignoring %d keys of modules this model does not build: %s", len(extra), preview_keys(extra))
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"{path} does not fit {name}: missing keys {preview_keys(missing)}")

    class_keys, checkpoint_classes = _class_mismatches(type(model), state, own)
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
def _class_dependent_keys(model_class: type[SegmentationModel]) -> frozenset[str]:
    """Names of the tensors whose shape depends on the class count (classifiers, attention outputs)."""
    with torch.device("meta"):
        two = model_class(2, training_heads=True).state_dict()
        three = model_class(3, training_heads=True).state_dict()
    return frozenset(k for k in two if two[k].shape != three[k].shape)


def _class_mismatches(
    model_class: type[SegmentationModel], state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[list[str], int | None]:
    """Class-dependent keys whose shapes differ, and the file's class count (``None`` if they agree)."""
    dependent = _class_dependent_keys(model_class)
    keys = [k for k in own if k in dependent and state[k].shape != own[k].shape]
    return keys, (int(state[keys[0]].shape[0]) if keys else None)


def load_weights(model: SegmentationModel, path: str | Path, *, strict_classes: bool = True) -> SegmentationModel:
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
    model: SegmentationModel,
    path: str | Path,
    *,
    model_name: str,
    label_set: str | LabelSet,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``model``'s weights in our format, atomically (temporary file + ``os.replace``).

    ``label_set`` is recorded by name; given as a :class:`~rtseg_ros.datasets.labels.LabelSet`, the whole
    set (names, colours, maps) is recorded too, so that the node and the evaluator serve the file's
    classes without being told. ``extra`` adds top-level entries (e.g. epoch, mIoU); use plain Python
    values and tensors so the file stays readable with ``weights_only=True``.

    Raises:
        ValueError: ``model_name`` is not the model's, or the label set's class count is not the model's.
    """
    if model_name != getattr(model, "model_name", None):
        raise ValueError(f"model_name {model_name!r} does not match the model ({getattr(model, 'model_name', None)!r})")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": model_name,
        "num_classes": int(model.num_classes),
        "scales": list(model.scales),
        "label_set": label_set if isinstance(label_set, str) else label_set.name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if not isinstance(label_set, str):
        if label_set.num_classes != model.num_classes:
            raise ValueError(f"label set {label_set.summary()} does not fit the model's {model.num_classes} classes")
        payload[LABEL_SET_DEFINITION] = label_set.to_dict()
    clashes = sorted(set(extra or {}) & set(payload))
    if clashes:
        raise ValueError(f"extra entries would overwrite {clashes}")
    payload.update(extra or {})
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def write_half_copy(source: str | Path, target: str | Path) -> Path:
    """Writes ``source`` (one of our weights files) to ``target`` with its floating-point tensors in fp16,
    atomically: half the size for shipping, and loading casts them back to the model's dtype.

    Raises:
        WeightsError: ``source`` is unreadable or not one of our files.
    """
    payload = load_checkpoint_file(source)
    if not (isinstance(payload, Mapping) and payload.get("format") == FORMAT):
        raise WeightsError(f"{source} is not a weights file written by save_weights")
    payload = dict(payload)
    payload["state_dict"] = {key: (value.half() if value.is_floating_point() else value)
                             for key, value in payload["state_dict"].items()}
    target = Path(target)
    with atomic_output(target) as tmp:
        torch.save(payload, tmp)
    return target


def preview_keys(keys: list[str], limit: int = 8) -> str:
    """``"a, b, c (+N more)"`` for error messages that name keys."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
