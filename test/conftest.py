"""Test-wide settings.

DDS must stay on loopback: the environment is fixed here, before any test imports rclpy, and is
inherited by the node processes the tests start.
"""
from __future__ import annotations

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
