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

import dataclasses
import json
import subprocess
import sys
from typing import Any

from rtseg_ros.engines.config import SegmenterConfig

__all__ = ["build_batch_in_child", "build_in_child"]

_LOG_TAIL = 1500


def build_in_child(config: SegmenterConfig, output_size: tuple[int, int], with_confidence: bool,
                   timeout_s: float | None = None) -> None:
    """Build (or find cached) the engine for ``config`` at ``output_size`` in a child process.

    Raises:
        RuntimeError: the child failed; the message ends with its output's tail.
        subprocess.TimeoutExpired: it ran past ``timeout_s``.
    """
    _run_child({"parameters": config.to_parameters(), "output_size": [int(v) for v in output_size],
                "with_confidence": bool(with_confidence)}, timeout_s)


def build_batch_in_child(config: SegmenterConfig, output_sizes: list[tuple[int, int]], with_confidence: bool,
                         timeout_s: float | None = None) -> None:
    """Build (or find cached) what :meth:`Segmenter.prepare_batch` needs for ``config`` in a child process:
    the batched network for up to ``config.max_batch`` frames and the finish for ``output_sizes``.

    Raises:
        RuntimeError: the child failed; the message ends with its output's tail.
        subprocess.TimeoutExpired: it ran past ``timeout_s``.
    """
    _run_child({"parameters": config.to_parameters(), "max_batch": config.max_batch,
                "output_sizes": [[int(v) for v in size] for size in output_sizes],
                "with_confidence": bool(with_confidence)}, timeout_s)


def _run_child(request: dict[str, Any], timeout_s: float | None) -> None:
    done = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-_LOG_TAIL:]
        raise RuntimeError(f"the engine build process exited with code {done.returncode}: {output}")


def _main(argv: list[str]) -> int:
    request: dict[str, Any] = json.loads(argv[0])
    from rtseg_ros.engines.segmenter import Segmenter

    config = SegmenterConfig.from_parameters(request["parameters"])
    if "max_batch" in request:  # not a node parameter: the batch build says it
        config = dataclasses.replace(config, max_batch=int(request["max_batch"]))
    segmenter = Segmenter(config)
    if "output_sizes" in request:
        segmenter.prepare_batch([tuple(size) for size in request["output_sizes"]], request["with_confidence"])
    else:
        segmenter.prepare(tuple(request["output_size"]), request["with_confidence"])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
