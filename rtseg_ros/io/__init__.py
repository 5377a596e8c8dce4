"""Image message decoding and rosbag2 reading/writing, without ROS (numpy, OpenCV, rosbags)."""
