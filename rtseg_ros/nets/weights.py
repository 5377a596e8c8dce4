"""Finding weight files by path or by manifest name. Nothing is ever downloaded.

``models/manifest.yaml`` names the authors' released checkpoints, their label set, the file name to
expect and where a user can fetch them, and the toy model shipped with the package (``synthetic_toy``).
``resolve_weights`` is the one resolver (node, ``rtseg eval``/``bench``/``build-engine``/``train``/``demo``); it
looks for files in, in order:

1. ``$RTSEG_MODELS_DIR``
2. ``./models`` (the current directory)
3. ``share/rtseg_ros/models`` of the install prefix (pip) and of every ``$AMENT_PREFIX_PATH`` entry (colcon)
4. the user cache's ``models/`` (:func:`rtseg_ros.user_cache.models_dir`: ``$RTSEG_ROS_CACHE/models``,
   by default ``~/.cache/rtseg_ros/models``)

and, for an editable/source checkout, the repository's own ``models/``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtseg_ros.nets.checkpoint import WeightsError, weights_hash
from rtseg_ros.user_cache import models_dir

MANIFEST_NAME = "manifest.yaml"
# The toy model shipped in models/ (a manifest entry): what `rtseg demo` runs and the toy int8 check uses.
TOY_MODEL = "synthetic_toy"
_SOURCE_MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ManifestEntry:
    """One named weight file of ``models/manifest.yaml``."""

    name: str
    model: str
    label_set: str
    num_classes: int
    file: str
    source: str = ""
    sha256: str | None = None
    reported_miou: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def search_dirs() -> list[Path]:
    """The folders searched for weight files and the manifest, in priority order, without duplicates."""
    candidates: list[Path] = []
    if os.environ.get("RTSEG_MODELS_DIR"):
        candidates.append(Path(os.environ["RTSEG_MODELS_DIR"]).expanduser())
    candidates.append(Path.cwd() / "models")
    prefixes = [Path(sys.prefix)] + [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [prefix / "share" / "rtseg_ros" / "models" for prefix in prefixes]
    candidates.append(models_dir())
    candidates.append(_SOURCE_MODELS)
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def load_manifest(path: str | Path | None = None) -> dict[str, ManifestEntry]:
    """Reads the manifest (the first ``manifest.yaml`` found in ``search_dirs()`` unless ``path`` is given).

    Returns an empty dict when no manifest exists.
    """
    if path is None:
        found = [d / MANIFEST_NAME for d in search_dirs() if (d / MANIFEST_NAME).is_file()]
        if not found:
            return {}
        path = found[0]
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream) or {}
    entries: dict[str, ManifestEntry] = {}
    known = {"model", "label_set", "num_classes", "file", "source", "sha256", "reported_miou"}
    for name, spec in (data.get("models") or {}).items():
        try:
            entries[name] = ManifestEntry(
                name=name,
                model=spec["model"],
                label_set=spec["label_set"],
                num_classes=int(spec["num_classes"]),
                file=spec["file"],
                source=spec.get("source", ""),
                sha256=spec.get("sha256"),
                reported_miou=dict(spec.get("reported_miou") or {}),
                details={k: v for k, v in spec.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: entry {name!r} is incomplete or malformed ({exc})") from exc
    return entries


def resolve_weights(spec: str | os.PathLike[str]) -> Path:
    """Turns a weights name into the path of an existing weight file: the one resolver every command uses.

    ``spec`` is, in this order: an existing path; a ``models/manifest.yaml`` entry name (its ``file``
    looked up in :func:`search_dirs`; with a ``sha256`` recorded, the first copy whose hash matches);
    or a file name looked up in :func:`search_dirs` (the package's ``models/``, the user cache's ...).

    Raises:
        WeightsError: the file is nowhere to be found (the message lists the folders searched and,
            for a manifest entry, where to download it), or every copy found of a manifest entry
            differs from the manifest's sha256.
    """
    text = os.fspath(spec)
    direct = Path(text).expanduser()
    if direct.is_file():
        return direct
    if os.sep in text or "/" in text:
        raise WeightsError(f"weights file not found: {text}; put weight files in models/ or pass an existing path")
    dirs = search_dirs()
    manifest = load_manifest()
    entry = manifest.get(text)
    # A bare name is a manifest entry or a file name inside one of the search folders.
    filename = entry.file if entry else text
    candidates = [folder / filename for folder in dirs if (folder / filename).is_file()]
    if candidates and not (entry and entry.sha256):
        return candidates[0]
    for candidate in candidates:
        # An older or retrained copy under the same name may shadow the manifest's file: skip it.
        if weights_hash(candidate) == entry.sha256:
            return candidate
    where = ", ".join(str(d) for d in dirs)
    if candidates:
        raise WeightsError(
            f"no copy of {entry.file} matches the manifest's sha256 for {entry.name!r} (found: "
            f"{', '.join(map(str, candidates))}); the files are corrupt or different checkpoints"
        )
    if entry:
        raise WeightsError(
            f"weights {entry.name!r} ({entry.model}, {entry.label_set}) not found: download {entry.file} from "
            f"{entry.source} and put it in models/ (searched: {where})"
        )
    names = ", ".join(sorted(manifest)) or "none (no manifest found)"
    raise WeightsError(
        f"weights {text!r} is neither an existing file nor a manifest entry (known entries: {names}); "
        f"put weight files in models/ (searched: {where})"
    )


def resolve_optional_weights(spec: str | os.PathLike[str] | None) -> Path | None:
    """:func:`resolve_weights`, with ``None`` or ``""`` (no weights: random initial weights) as ``None``."""
    if spec is None or not os.fspath(spec):
        return None
    return resolve_weights(spec)
