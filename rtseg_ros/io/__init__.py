"""Pixels in and out, without ROS (numpy, OpenCV, rosbags): image messages, rosbag2 bags, frame sources
(folders, videos, bags, synthetic scenes), the label overlay, and atomic file output."""
