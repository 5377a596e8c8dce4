"""rtseg_ros: real-time semantic segmentation for ROS 2.

The package is split into a ROS-free core (``nets``, ``engines``, ``datasets``, ``metrics``,
``evaluation``, ``training``, ``io``, ``benchmarks``) that never imports rclpy, and a thin ROS 2
layer (``ros``) that wires topics and parameters to the core.
"""

__version__ = "0.1.0"
