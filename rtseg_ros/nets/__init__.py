"""Segmentation networks (MFARANet, ATONet), their ResNet-18 encoder, and weight loading.

>>> from rtseg_ros.nets import build_model, load_weights
>>> model = load_weights(build_model("mfaranet", scales=(2,)), "models/mfaranet_cityscapes.pth").eval()
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
