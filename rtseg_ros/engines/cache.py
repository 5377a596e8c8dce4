"""On-disk cache for exported and compiled engines.

An entry lives in ``<root>/<kind>/<name>/``: the artifact file plus ``meta.json``. The entry *name*
says which slot an artifact fills (model, sizes, scales, precision); the *key* stored in
``meta.json`` holds everything that must match for the artifact to be reused (weights hash, device,
library versions, ...). A slot whose key no longer matches is *stale* and is rebuilt in place, with a
log line naming the fields that changed, so a weights update does not leave dead engines behind.

Writes are atomic (temporary file + ``os.replace``) and ``meta.json`` is written last, carrying the
artifact's sha256: a crash mid-write leaves an entry that is simply missing, and a truncated or
altered artifact is detected before it is loaded. The temporary file keeps the artifact's suffix,
because some writers decide the format by it (``torch.export.save`` wants ``.pt2``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from rtseg_ros.io.files import file_sha256, write_bytes_atomic

LOG = logging.getLogger(__name__)
T = TypeVar("T")

META_FILE = "meta.json"
FORMAT = "rtseg_ros-cache/1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 over a module's parameters and buffers (names, shapes, dtypes and bytes).

    Used as the weights identity when a model has no weights file (random initialisation), so that
    an engine built from one random draw is never reused for another.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The code an exported graph is made of: the networks and the head around them.
GRAPH_SOURCES: tuple[str, ...] = ("nets", "engines/base.py", "engines/preprocessing.py")


@functools.lru_cache(maxsize=None)
def graph_source_sha256(sources: tuple[str, ...] = GRAPH_SOURCES) -> str:
    """Hex sha256 over the package's Python files under ``sources`` (paths relative to the package).

    Part of every engine's cache key: a change to a network's code (or to the head that wraps it)
    changes the exported graph without changing the weights, and must not reuse old engines.
    """
    digest = hashlib.sha256()
    for source in sources:
        root = PACKAGE_ROOT / source
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            digest.update(file.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, with its suffix, renamed onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers that refuse to overwrite (or check for a file) get a free name
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


class CacheEntry:
    """One cache slot: an artifact file and the key it was built for."""

    def __init__(self, directory: Path, artifact_name: str, key: Mapping[str, Any]):
        self.directory = directory
        self.artifact = directory / artifact_name
        self.key = {k: _jsonable(v) for k, v in key.items()}

    @property
    def meta_path(self) -> Path:
        return self.directory / META_FILE

    def lookup(self) -> Path | None:
        """The artifact path if a valid entry exists for this key, else ``None`` (the reason is logged)."""
        if not self.meta_path.is_file():
            if self.artifact.exists():
                LOG.warning("cache entry %s has no %s (interrupted write?); rebuilding", self.directory, META_FILE)
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            stored_key = meta["key"]
            stored_sha = meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOG.warning("cache entry %s is corrupt (unreadable %s: %s); rebuilding", self.directory, META_FILE, exc)
            return None
        if stored_key != self.key:
            changed = sorted(k for k in set(stored_key) | set(self.key) if stored_key.get(k) != self.key.get(k))
            details = ", ".join(f"{k}: {stored_key.get(k)!r} -> {self.key.get(k)!r}" for k in changed)
            LOG.warning("cache entry %s is stale (%s); rebuilding", self.directory, details)
            return None
        if not self.artifact.is_file():
            LOG.warning("cache entry %s lost its artifact %s; rebuilding", self.directory, self.artifact.name)
            return None
        actual = file_sha256(self.artifact)
        if actual != stored_sha:
            LOG.warning("cache entry %s is corrupt (sha256 %s..., expected %s...); rebuilding",
                        self.directory, actual[:12], stored_sha[:12])
            return None
        return self.artifact

    def store(self, write: Callable[[Path], None]) -> Path:
        """Build the artifact with ``write(tmp_path)`` and publish it atomically with its key."""
        self.invalidate()
        with _temporary_beside(self.artifact) as tmp_path:
            write(tmp_path)
            if not tmp_path.is_file() or tmp_path.stat().st_size == 0:
                raise RuntimeError(f"building {self.artifact.name} wrote nothing")
            sha = file_sha256(tmp_path)
        meta = {"format": FORMAT, "artifact": self.artifact.name, "sha256": sha, "key": self.key}
        write_bytes_atomic(self.meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
        return self.artifact

    def invalidate(self) -> None:
        """Remove the entry (meta first, so a half-removed entry reads as missing)."""
        self.meta_path.unlink(missing_ok=True)
        if self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def load_or_build(self, load: Callable[[Path], T], build: Callable[[Path], None], what: str) -> T:
        """Load a valid cached artifact, or build, store and load a new one.

        An artifact that passes the checksum but still fails to load (for example written by an
        incompatible library build) is treated as corrupt: logged, rebuilt once.
        """
        started = time.perf_counter()
        path = self.lookup()
        if path is not None:
            try:
                result = load(path)
            except Exception as exc:  # noqa: BLE001 - any load failure means the entry is unusable
                LOG.warning("cached %s at %s failed to load (%s: %s); rebuilding", what, path, type(exc).__name__, exc)
            else:
                # The load time (checksum included) is what a warm start costs: worth a log line.
                LOG.info("loaded cached %s from %s in %.2f s", what, path, time.perf_counter() - started)
                return result
        LOG.info("building %s into %s", what, self.directory)
        started = time.perf_counter()
        self.store(build)
        result = load(self.artifact)
        LOG.info("built %s in %.1f s", what, time.perf_counter() - started)
        return result


class ArtifactCache:
    """A folder of :class:`CacheEntry` slots for one kind of artifact (``onnx``, ``tensorrt``, ...)."""

    def __init__(self, root: str | Path, kind: str):
        self.root = Path(root).expanduser() / kind

    def entry(self, name: str, artifact_name: str, key: Mapping[str, Any]) -> CacheEntry:
        return CacheEntry(self.root / _UNSAFE.sub("_", name), artifact_name, key)


def _jsonable(value: Any) -> Any:
    # Keys are compared after a JSON round trip, so tuples must already be lists.
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
