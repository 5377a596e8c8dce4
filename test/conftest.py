"""Test-wide settings.

DDS must stay on loopback: the environment is fixed here, before any test imports rclpy, and is
inherited by the node processes the tests start.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_localhost.xml")
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
# A domain of our own per test session avoids cross-talk with other runs on the machine.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 99)))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``: official parity data (read-only; never copied into the project)."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture(autouse=True)
def _package_loggers_propagate() -> None:
    """Let the package's log records reach pytest's ``caplog``.

    The launch_testing pytest plugin imports ``launch``, which makes every logger created afterwards
    a ``LaunchLogger`` with ``propagate = False``; the package's module loggers are created after
    the plugin loads, so their records would never reach the root logger that caplog listens on.
    """
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] == "rtseg_ros" and isinstance(logger, logging.Logger):
            logger.propagate = True

