"""Managing a ``segmentation_node`` started as a child process (the demo and live evaluation)."""
from __future__ import annotations

import signal
import subprocess


def stop_node_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a node process the way Ctrl-C would, so it finishes its frame and shuts ROS down cleanly;
    kill it only if it has not exited within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
