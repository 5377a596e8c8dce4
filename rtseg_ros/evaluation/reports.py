"""Evaluation outputs: versioned JSON, a Markdown summary, a confusion heatmap and overlays.

The JSON report is the machine-readable result; everything else is derived from it or drawn for
people. JSON files are replaced atomically (write to a temporary file, then rename), so a reader,
or a run that is killed, never sees a half-written report.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtseg_ros.datasets.labels import LabelSet
from rtseg_ros.io.files import atomic_output
from rtseg_ros.io.overlay import overlay_labels

REPORT_SCHEMA = "rtseg_ros/eval"
REPORT_SCHEMA_VERSION = 1


def report_paths(json_path: str | Path) -> dict[str, Path]:
    """Where the files that accompany a JSON report go, named after it."""
    json_path = Path(json_path)
    stem = json_path.with_suffix("")
    return {
        "json": json_path,
        "frames": Path(f"{stem}.frames.jsonl"),
        "markdown": Path(f"{stem}.md"),
        "heatmap": Path(f"{stem}_confusion.png"),
        "overlays": Path(f"{stem}_overlays"),
    }


def _plain(value: Any) -> Any:
    """JSON-ready values: numpy scalars and arrays to Python, NaN and infinities to ``null``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so that ``path`` holds either the old or the new file, never a mix."""
    with atomic_output(path) as tmp, open(tmp, "w") as handle:
        json.dump(_plain(data), handle, indent=2, allow_nan=False)
        handle.write("\n")


def append_json_line(handle: Any, data: dict[str, Any]) -> None:
    """Append one record to an open JSON-lines file and flush it to the OS."""
    handle.write(json.dumps(_plain(data), allow_nan=False) + "\n")
    handle.flush()


def _fmt(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def markdown_summary(report: dict[str, Any]) -> str:
    """A human-readable summary of a JSON report."""
    model = report.get("model", {})
    lines = [
        f"# Evaluation: {model.get('name', '?')} on {report.get('source', {}).get('description', '?')}",
        "",
        f"- status: {'complete' if report.get('complete') else 'INCOMPLETE (partial results)'}",
        f"- label set: {report.get('label_set')}",
        f"- model: {model.get('name')} weights `{model.get('weights') or 'random (untrained)'}`, "
        f"backend {model.get('backend')}, precision {model.get('precision')}, "
        f"input {model.get('input_size')}, scales {model.get('scales')}",
        f"- frames evaluated: {report.get('frames')} of {report.get('frames_read')} read",
        f"- **mIoU: {_fmt(report.get('miou'))} %**, pixel accuracy: {_fmt(report.get('pixel_accuracy'))} %",
    ]
    latency = report.get("latency_ms") or {}
    if latency.get("p50") is not None:
        lines.append(f"- latency: p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms "
                     f"({latency.get('count', 0)} frames)")
    if report.get("throughput_fps") is not None:
        lines.append(f"- throughput: {report['throughput_fps']:.2f} frames/s")
    live = report.get("live")
    if live:
        lines.append(f"- live: {live.get('published')} published, {live.get('received')} received, "
                     f"{live.get('dropped')} dropped, rate factor {live.get('rate_factor')}")
    damage = (report.get("source") or {}).get("damage")
    if damage:
        where = f"{damage.get('file') or damage.get('storage')}" + (
            f" at byte {damage['offset']}" if damage.get("offset") is not None else "")
        lost = "unknown" if damage.get("frames_lost") is None else damage["frames_lost"]
        lines.append(f"- **bag damaged** in {where} ({damage.get('reason')}): {damage.get('frames_recovered')} "
                     f"frames before the damage recovered, frames lost: {lost}")
    skipped = report.get("skipped") or {}
    if skipped:
        lines.append("- skipped: " + ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())))
    issues = report.get("issues") or {}
    if issues:
        lines.append("- issues: " + ", ".join(f"{reason}: {count}" for reason, count in sorted(issues.items())))
    lines += ["", "| class | IoU (%) |", "|---|---:|"]
    for name, iou in (report.get("per_class_iou") or {}).items():
        lines.append(f"| {name} | {_fmt(iou)} |")
    errors = report.get("errors") or []
    if errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def write_confusion_heatmap(path: str | Path, normalized: np.ndarray, class_names: tuple[str, ...] | list[str],
                            title: str = "") -> None:
    """Draw a row-normalised confusion matrix (rows: ground truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(class_names)
    size = max(5.0, 0.45 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(normalized, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if normalized[i, j] >= 0.005:
                    ax.text(j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="black" if normalized[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the class's pixels")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120)


def overlay_panel(image_rgb: np.ndarray, prediction: np.ndarray, labels: np.ndarray | None,
                  label_set: LabelSet, alpha: float = 0.55) -> np.ndarray:
    """Image | ground truth over the image | prediction over the image, side by side (RGB).

    Both are blended by :func:`rtseg_ros.io.overlay.overlay_labels`, as the node's overlay is:
    ignored ground-truth pixels are black, so what is not scored is visible.
    """
    panels = [image_rgb]
    if labels is not None:
        panels.append(overlay_labels(image_rgb, "rgb", labels, label_set, alpha))
    panels.append(overlay_labels(image_rgb, "rgb", prediction, label_set, alpha))
    return np.ascontiguousarray(np.concatenate(panels, axis=1))


def write_overlay(path: str | Path, image_rgb: np.ndarray, prediction: np.ndarray, labels: np.ndarray | None,
                  label_set: LabelSet) -> None:
    """Save :func:`overlay_panel` as an image file (the suffix picks the format)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    panel = overlay_panel(image_rgb, prediction, labels, label_set)
    if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write overlay {path}")
