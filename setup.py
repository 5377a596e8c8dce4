"""Install rtseg_ros as a ROS 2 ament_python package (colcon) or as a plain pip package."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "rtseg_ros"

# torch==2.13.0 must satisfy every pin: a looser pin lets pip pull a multi-GB CUDA build.
TORCH = "torch>=2.4,<2.14"
ROS = [
    "ros-jazzy-rclpy",
    "ros-jazzy-rmw-fastrtps-cpp",
    "ros-jazzy-sensor-msgs",
    "ros-jazzy-std-msgs",
    "ros-jazzy-diagnostic-msgs",
    "ros-jazzy-builtin-interfaces",
    "ros-jazzy-rcl-interfaces",
    "ros-jazzy-lifecycle-msgs",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["py.typed", "training/recipes/*.yaml", "engines/*.json", "datasets/label_sets/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # ros2 run and launch_ros look for executables in lib/<package> only. Shipping two shims as
        # data keeps the console scripts in bin/ for pip users (an install_scripts entry in setup.cfg
        # would move them out of PATH under `pip install -e .`, and [develop] script_dir breaks it).
        (f"lib/{PACKAGE}", ["resource/segmentation_node", "resource/rtseg"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        # The toy model `rtseg demo` runs ships with the package; other weight files are fetched by hand.
        (f"share/{PACKAGE}/models", glob("models/*.yaml") + glob("models/*.md") + glob("models/synthetic_toy.pth")),
    ],
    python_requires=">=3.10",
    install_requires=[
        TORCH,
        "numpy>=1.24",
        "opencv-python-headless>=4.8,<5",  # tested with 4.14; OpenCV 5 not yet
        "pyyaml>=6",
        "click>=8.1",
        "tqdm>=4.60",
        "rosbags>=0.10",
        "rosbags-image[opencv-headless]>=0.9",
        "matplotlib>=3.7",  # the evaluator's confusion heatmap
    ],
    extras_require={
        "ros": ROS,
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # Tested with OpenVINO 2026.4.1 and NNCF 3.4.0 (neither depends on torch).
        "openvino": ["openvino>=2026.0", "nncf>=3.0"],
        # Desktop x86_64 Linux only: torch-tensorrt 2.13 pairs with torch 2.13, TensorRT 11 and CUDA 13.
        # Its aarch64 wheel is the server-ARM (SBSA) build, which cannot run on a Jetson: JetPack 6
        # (TensorRT 10.3, CUDA 12.6) takes NVIDIA's torch and torch_tensorrt 2.8 wheels (docs/jetson.md),
        # so on other machines this extra installs nothing.
        "tensorrt": ['torch-tensorrt==2.13.0; platform_system == "Linux" and platform_machine == "x86_64"'],
        "train": ["tensorboard>=2.14"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "cityscapesscripts>=2.2"],
    },
    zip_safe=True,
    maintainer="rtseg_ros maintainers",
    maintainer_email="maintainers@rtseg-ros.dev",
    description="Real-time semantic segmentation for ROS 2 (MFARANet, ATONet).",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "rtseg = rtseg_ros.cli:main",
            "segmentation_node = rtseg_ros.ros.segmentation_node:main",
        ],
    },
)
