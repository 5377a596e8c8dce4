"""Camera frames for int8 calibration: a folder of images (searched recursively), a video or a rosbag2.

Every int8 path (TensorRT through ModelOpt, OpenVINO through NNCF) calibrates on the same frames,
read here in a repeatable order and preprocessed exactly as the Segmenter preprocesses camera
frames. :func:`calibration_key` is what a calibrated artifact depends on; it includes a fingerprint
of the files, so replacing the calibration images makes a cached int8 engine stale.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtseg_ros.io.frames import FrameSourceError, open_frames

if TYPE_CHECKING:
    import torch

# Seeds of the synthetic calibration scenes start here, far from the seeds that benchmarks and
# evaluations draw their scenes from (0, 1, 2, ...), so int8 is never calibrated on its test frames.
SYNTHETIC_CALIBRATION_SEED = 1_000_000


class CalibrationDataError(ValueError):
    """Calibration data that is missing, empty or unreadable."""


def iter_calibration_frames(path: str | Path, limit: int) -> Iterator[tuple[np.ndarray, str]]:
    """Yield up to ``limit`` (HxWx3 uint8 frame, colour order) pairs from ``path``.

    ``path`` is a rosbag2 folder (frames from its image topic), a video file, or a folder searched
    recursively for image files, taken in sorted order so calibration is repeatable; unreadable
    files are passed over (see :mod:`rtseg_ros.io.frames`).

    Raises:
        CalibrationDataError: ``path`` is missing or yields no readable frame.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CalibrationDataError(f"calibration data not found: {root}")
    count = 0
    try:
        for frame in itertools.islice(open_frames(root, recursive=True), limit):
            count += 1
            yield frame
    except FrameSourceError as exc:
        raise CalibrationDataError(f"no readable frames in {root}: {exc}") from None
    if count == 0:
        raise CalibrationDataError(f"no readable frames in {root} (expected images, a video or a rosbag2 folder)")


def calibration_fingerprint(path: str | Path) -> str:
    """Hex sha256 over the names, sizes and modification times of the files under ``path``.

    Cheap (no pixel is read) and enough to notice frames added, removed or replaced.
    """
    root = Path(path).expanduser().resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == root else str(file.relative_to(root))
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def calibration_key(path: str | Path, frames: int) -> dict[str, Any]:
    """What a calibrated artifact depends on: the data's location and fingerprint and the frame count."""
    return {"data": str(Path(path).expanduser().resolve()), "fingerprint": calibration_fingerprint(path),
            "frames": int(frames)}


class CalibrationImages:
    """The calibration frames as network inputs: 1x3xHxW float32 NCHW tensors on the CPU.

    Re-iterable (each pass reads the frames again, so memory holds one frame at a time, not 64);
    calibrators that walk the data several times, such as NNCF's statistics and bias-correction
    passes, see the same frames in the same order.

    Args:
        path: calibration data (see :func:`iter_calibration_frames`).
        limit: at most this many frames.
        network_size: (height, width) the frames are resized to, as the Segmenter does.
    """

    def __init__(self, path: str | Path, limit: int, network_size: tuple[int, int]):
        self.path = Path(path).expanduser()
        self.limit = int(limit)
        self.network_size = (int(network_size[0]), int(network_size[1]))

    def __iter__(self) -> Iterator[torch.Tensor]:
        import torch

        from rtseg_ros.engines.preprocessing import Preprocessor, frame_to_device

        device = torch.device("cpu")
        preprocess = Preprocessor(self.network_size, device, torch.float32, channels_last=False)
        with torch.inference_mode():
            for frame, order in iter_calibration_frames(self.path, self.limit):
                yield preprocess(frame_to_device(frame, device), order).contiguous()


def write_synthetic_calibration_frames(folder: str | Path, count: int, frame_size: tuple[int, int]) -> Path:
    """Write ``count`` synthetic street scenes of ``frame_size`` as PNG files (once; kept if present).

    For int8 runs with no camera data of their own (benchmarks, the synthetic toy model). The scenes'
    seeds start at :data:`SYNTHETIC_CALIBRATION_SEED`, apart from any test scene.

    Returns:
        ``folder``, ready to pass as ``calibration_data``.
    """
    import cv2

    from rtseg_ros.datasets.synthetic import make_scene
    from rtseg_ros.io.files import atomic_output

    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        target = root / f"calibration_{index:04d}.png"
        if target.is_file():
            continue
        image, _ = make_scene(SYNTHETIC_CALIBRATION_SEED + index, frame_size[0], frame_size[1])
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
        if not ok:
            raise CalibrationDataError(f"could not encode calibration frame {target}")
        with atomic_output(target) as tmp:
            tmp.write_bytes(encoded.tobytes())
    return root
