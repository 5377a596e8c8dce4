"""The ROS 2 layer: nodes that wire topics and parameters to the core. The only place rclpy is imported."""
