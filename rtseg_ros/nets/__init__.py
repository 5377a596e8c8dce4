"""Segmentation networks (MFARANet, ATONet), their ResNet-18 encoder, and weight loading.

Example::

    from rtseg_ros.nets import build_model, load_weights
    from rtseg_ros.nets.weights import resolve_weights
    path = resolve_weights("mfaranet_cityscapes_train")  # a models/manifest.yaml entry, or any path
    model = load_weights(build_model("mfaranet", scales=(2,)), path).eval()
    logits = model(images)  # Bx3xHxW ImageNet-normalised RGB -> BxCxHxW

Layers, bottom first: ``base`` (the :class:`SegmentationModel` contract) and ``registry`` (names to
classes); ``checkpoint`` (generic weight files); ``layers`` and ``encoder``; the networks, each with
its authors' checkpoint filter; ``complexity`` and ``weights`` (manifest lookup) on top. Importing
this package registers every network.
"""
from rtseg_ros.names import ALL_SCALES, MODEL_NAMES, normalize_scales
from rtseg_ros.nets import atonet, mfaranet  # noqa: F401  (importing a network registers it)
from rtseg_ros.nets.base import SegmentationModel, UpstreamCheckpoint
from rtseg_ros.nets.checkpoint import WeightsError, load_weights, save_weights, weights_hash
from rtseg_ros.nets.registry import build_model, get_model_class, list_models, register_model

__all__ = [
    "ALL_SCALES",
    "MODEL_NAMES",
    "SegmentationModel",
    "UpstreamCheckpoint",
    "WeightsError",
    "build_model",
    "get_model_class",
    "list_models",
    "load_weights",
    "normalize_scales",
    "register_model",
    "save_weights",
    "weights_hash",
]
