"""Building an engine variant into the engine cache in a child process, for a process that is serving.

Exporting or compiling an engine holds Python's GIL for long stretches (a 1.3 s stall seen while an ONNX
export saved its model here), which would stall every other thread of the serving node: its frame
worker, its executor, its diagnostics. So the node builds a new variant (another output size, or with
confidence) in a child process, which writes the engine cache, and then loads the cached artifact in its
own process, which takes a fraction of the time. The child runs at the node's own CPU priority: on a
loaded machine a niced build starves (measured here: 248 s at niceness 5 for a 20 s export).

``python -m rtseg_ros.engines.variant_build '<json>'`` is the child; :func:`build_in_child` starts it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from rtseg_ros.engines.config import SegmenterConfig

__all__ = ["build_in_child"]

_LOG_TAIL = 1500


def build_in_child(config: SegmenterConfig, output_size: tuple[int, int], with_confidence: bool,
                   timeout_s: float | None = None) -> None:
    """Build (or find cached) the engine for ``config`` at ``output_size`` in a child process.

    Raises:
        RuntimeError: the child failed; the message ends with its output's tail.
        subprocess.TimeoutExpired: it ran past ``timeout_s``.
    """
    request = {"parameters": config.to_parameters(), "output_size": [int(v) for v in output_size],
               "with_confidence": bool(with_confidence)}
    done = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-_LOG_TAIL:]
        raise RuntimeError(f"the engine build process exited with code {done.returncode}: {output}")


def _main(argv: list[str]) -> int:
    request: dict[str, Any] = json.loads(argv[0])
    from rtseg_ros.engines.segmenter import Segmenter

    segmenter = Segmenter(SegmenterConfig.from_parameters(request["parameters"]))
    segmenter.prepare(tuple(request["output_size"]), request["with_confidence"])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
