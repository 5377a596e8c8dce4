"""Label sets, data set readers and synthetic scenes (no ROS, no network access)."""
from rtseg_ros.datasets.labels import CAMVID, CITYSCAPES, LabelSet, get_label_set

__all__ = ["CAMVID", "CITYSCAPES", "LabelSet", "get_label_set"]
