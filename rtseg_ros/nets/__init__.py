"""Segmentation networks (MFARANet, ATONet), their ResNet-18 encoder, and weight loading.

Example::

    from rtseg_ros.nets import build_model, load_weights
    from rtseg_ros.nets.weights import resolve_weights
    path = resolve_weights("mfaranet_cityscapes_train")  # a models/manifest.yaml entry, or any path
    model = load_weights(build_model("mfaranet", scales=(2,)), path).eval()
    logits = model(images)  # Bx3xHxW ImageNet-normalised RGB -> BxCxHxW
"""
from rtseg_ros.nets.builders import MODEL_NAMES, build_model, normalize_scales
from rtseg_ros.nets.checkpoint import WeightsError, load_weights, save_weights, weights_hash

__all__ = [
    "MODEL_NAMES",
    "WeightsError",
    "build_model",
    "load_weights",
    "normalize_scales",
    "save_weights",
    "weights_hash",
]
