"""The networks by name: ``register_model`` / ``list_models`` / ``build_model``.

A network module registers its class (and its authors' checkpoint layout) with the decorator; the
package ``rtseg_ros.nets`` imports every network module, so the registry is complete whenever any
part of ``rtseg_ros.nets`` is imported. Names come from :data:`rtseg_ros.names.MODEL_NAMES`, the one
list the CLI, the configuration and the launch file offer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rtseg_ros.names import ALL_SCALES, MODEL_NAMES
from rtseg_ros.nets.base import SegmentationModel, UpstreamCheckpoint

ModelClass = TypeVar("ModelClass", bound=type[SegmentationModel])


@dataclass(frozen=True)
class ModelEntry:
    """A registered network.

    Attributes:
        name: its name in :data:`~rtseg_ros.names.MODEL_NAMES`.
        model_class: the :class:`~rtseg_ros.nets.base.SegmentationModel` subclass.
        upstream: the authors' checkpoint layout, if their files can be loaded.
    """

    name: str
    model_class: type[SegmentationModel]
    upstream: UpstreamCheckpoint | None = None

    @property
    def display_name(self) -> str:
        """The network's own spelling (``MFARANet``), for messages."""
        return self.model_class.__name__


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, upstream: UpstreamCheckpoint | None = None) -> Callable[[ModelClass], ModelClass]:
    """Class decorator adding a network to the registry under ``name`` (and setting its ``model_name``).

    Raises:
        ValueError: ``name`` is not in :data:`~rtseg_ros.names.MODEL_NAMES` (add it there first) or is
            already taken by another class.
        TypeError: the class is not a :class:`~rtseg_ros.nets.base.SegmentationModel`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model name {name!r} is not in rtseg_ros.names.MODEL_NAMES {MODEL_NAMES}; add it there")

    def register(cls: ModelClass) -> ModelClass:
        if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
            raise TypeError(f"register_model({name!r}) expects a SegmentationModel subclass, got {cls!r}")
        known = _MODELS.get(name)
        if known is not None and known.model_class.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {name!r} is already registered by {known.model_class.__qualname__}")
        cls.model_name = name
        _MODELS[name] = ModelEntry(name, cls, upstream)
        return cls

    return register


def list_models() -> tuple[str, ...]:
    """The registered network names, in the order of :data:`~rtseg_ros.names.MODEL_NAMES`."""
    return tuple(name for name in MODEL_NAMES if name in _MODELS)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (case-insensitive).

    Raises:
        ValueError: no network of that name.
    """
    key = name.lower() if isinstance(name, str) else name
    entry = _MODELS.get(key)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return entry


def get_model_class(name: str) -> type[SegmentationModel]:
    """The class of network ``name`` (case-insensitive); ``ValueError`` if there is none."""
    return get_model_entry(name).model_class


def build_model(
    name: str,
    num_classes: int = 19,
    scales: Sequence[int] = ALL_SCALES,
    *,
    training_heads: bool = False,
) -> SegmentationModel:
    """Builds a float32 segmentation network with random weights (load weights with ``load_weights``).

    Args:
        name: one of :func:`list_models` (case-insensitive).
        num_classes: number of output classes.
        scales: the prediction scales kept, for a network with ``scale_selection`` (MFARANet: the
            stages fused into the output; a single scale is the pruned model). Others accept only
            the default.
        training_heads: build the heads only ``forward_train`` uses (ATONet's auxiliary classifiers;
            MFARANet's training outputs are its per-scale classifiers, which it always has).

    Returns:
        The model; ``model(x, output_size=None)`` maps a normalised RGB batch B x 3 x H x W to logits
        B x C x H x W (or ``output_size``), and ``model.forward_train(x)`` returns a dict of logits.

    Raises:
        ValueError: unknown name, bad ``num_classes`` or ``scales``.
    """
    return get_model_class(name)(num_classes, scales, training_heads=training_heads)
