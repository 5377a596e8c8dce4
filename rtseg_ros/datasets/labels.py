"""Label sets as data: class names, colours, and the raw-label to train-id maps, read from YAML files.

A label set is a YAML file (:func:`read_label_set_file`; the format is :meth:`LabelSet.from_dict`'s,
and docs/own-classes.md walks through one). The built-in sets are two such files shipped in
``rtseg_ros/datasets/label_sets/``: Cityscapes (the official ``labels.py`` table of the Cityscapes
scripts: 34 label ids, 19 of them trained) and CamVid (the 11-class grouping of the SegNet release,
index PNGs with 11 = void, and the grouping of the original 32-class colour annotations into those
11). Wherever a label set is named (node parameter, launch argument, ``rtseg eval --label-set``,
``rtseg make-bag --label-set``, a recipe's ``model.label_set``), :func:`get_label_set` takes a
built-in name or the path of such a file.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from rtseg_ros.names import IGNORE_INDEX, LABEL_SET_NAMES

LABEL_SET_DIR = Path(__file__).resolve().parent / "label_sets"
LABEL_SET_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")

# The keys a label set file may hold; anything else is a typo and refused.
_TOP_KEYS = ("name", "description", "ignore_index", "classes", "label_ids", "color_labels")
_CLASS_KEYS = ("name", "color", "description", "id")
_RAW_KEYS = ("id", "name", "class", "color")


class LabelSetError(ValueError):
    """A label set that is unknown, unreadable or inconsistent; the message says which and why."""


@dataclass(frozen=True)
class RawLabel:
    """One value of a data set's own annotations and the class it is trained as.

    Attributes:
        name: the data set's name for it (may repeat a class name, or be empty).
        train_id: the class index it becomes, or the ignore value.
        id: the value in single-channel label files (``label_ids``), if it is one.
        color: its RGB colour: in colour annotations (``color_labels``), or the data set's display colour.
    """

    name: str
    train_id: int
    id: int | None = None
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class LabelSet:
    """A set of trained classes.

    Attributes:
        name: short identifier (``cityscapes``, ``camvid``, a file's ``name`` or its stem).
        class_names: one name per train id, in train-id order.
        colors: one RGB triple per train id.
        ignore_index: the label value excluded from losses and metrics.
        descriptions: one text per train id (empty strings where the file gives none), or ``()``.
        label_ids: raw label-file values and their train ids (``()``: masks hold train ids).
        color_labels: colours of colour annotations and their train ids.
        description: one line about the set.
        source: where it was read from (a built-in name or a file path; empty when it came from a
            checkpoint or a bag). Not part of its identity.
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    descriptions: tuple[str, ...] = ()
    label_ids: tuple[RawLabel, ...] = ()
    color_labels: tuple[RawLabel, ...] = ()
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> np.ndarray:
        """A 256x3 uint8 RGB lookup table; ids without a class (the ignore value too) are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Map an HxW array of train ids to an HxWx3 uint8 RGB image."""
        labels = labels.astype(np.uint8, copy=False)
        # cv2.LUT is about 4x faster than numpy fancy indexing at camera resolutions.
        return cv2.LUT(cv2.merge([labels, labels, labels]), self.palette().reshape(256, 1, 3))

    def label_id_map(self) -> dict[int, int] | None:
        """``{label-file value: train id}`` from ``label_ids``; ``None`` when the set has no such map."""
        if not self.label_ids:
            return None
        return {raw.id: raw.train_id for raw in self.label_ids if raw.id is not None}

    def folder_label_map(self) -> dict[int, int] | None:
        """The ``{mask value: train id}`` map for masks of the ``folder`` layout: a file's ``label_ids``.

        ``None`` for the built-in sets: their ``label_ids`` describe their own data sets' label files,
        and folder masks of those classes hold train ids.
        """
        return None if LABEL_SETS.get(self.name) == self else self.label_id_map()

    def label_id_table(self) -> np.ndarray:
        """A 256-entry uint8 lookup table from label-file values to train ids; unlisted values are ignored.

        Without ``label_ids`` the values are train ids already: classes map to themselves.
        """
        table = np.full(256, self.ignore_index, dtype=np.uint8)
        mapping = self.label_id_map()
        if mapping is None:
            table[: self.num_classes] = np.arange(self.num_classes, dtype=np.uint8)
        else:
            for value, train_id in mapping.items():
                table[value] = train_id
        return table

    def train_id_table(self) -> np.ndarray:
        """A 256-entry uint8 lookup table from train ids back to the first label id of each class (else 0)."""
        table = np.zeros(256, dtype=np.uint8)
        for raw in reversed(self.label_ids):  # reversed: the first label id of a class wins
            if raw.id is not None and raw.train_id != self.ignore_index:
                table[raw.train_id] = raw.id
        return table

    def color_to_train_id(self, rgb: np.ndarray) -> np.ndarray:
        """Map an HxWx3 RGB colour annotation to train ids through ``color_labels`` (unlisted: ignored)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB colour label, got shape {rgb.shape}")
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        out = np.full(rgb.shape[:2], self.ignore_index, dtype=np.uint8)
        for raw in self.color_labels:
            if raw.train_id != self.ignore_index and raw.color is not None:
                r, g, b = raw.color
                out[packed == ((r << 16) | (g << 8) | b)] = raw.train_id
        return out

    def summary(self, limit: int = 6) -> str:
        """``'name' (N classes: a, b, c, ...)`` for messages."""
        names = ", ".join(self.class_names[:limit]) + (", ..." if self.num_classes > limit else "")
        where = f" from {self.source}" if self.source and self.source != self.name else ""
        return f"{self.name!r}{where} ({self.num_classes} classes: {names})"

    def same_classes(self, other: LabelSet) -> bool:
        """The same class names in the same order (colours and descriptions may differ)."""
        return self.class_names == other.class_names

    # Plain data ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The set as plain data in the file format (YAML/JSON-ready; :meth:`from_dict` reads it back)."""
        classes = []
        for index, (name, color) in enumerate(zip(self.class_names, self.colors)):
            entry: dict[str, Any] = {"name": name, "color": list(color)}
            if self.descriptions and self.descriptions[index]:
                entry["description"] = self.descriptions[index]
            classes.append(entry)
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["ignore_index"] = self.ignore_index
        data["classes"] = classes
        if self.label_ids:
            data["label_ids"] = [self._raw_dict(raw) for raw in self.label_ids]
        if self.color_labels:
            data["color_labels"] = [self._raw_dict(raw) for raw in self.color_labels]
        return data

    def _raw_dict(self, raw: RawLabel) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if raw.id is not None:
            entry["id"] = raw.id
        if raw.name:
            entry["name"] = raw.name
        entry["class"] = None if raw.train_id == self.ignore_index else self.class_names[raw.train_id]
        if raw.color is not None:
            entry["color"] = list(raw.color)
        return entry

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "", default_name: str = "") -> LabelSet:
        """Read and check a label set in the file format.

        Format (keys other than these are refused)::

            name: robot                       # optional; default: the file's stem
            description: one line             # optional
            ignore_index: 255                 # optional; the label value that is not scored
            classes:                          # one per network output, in output order
              - {name: floor, color: [128, 64, 128], description: what counts as floor}
              - {name: wall, color: [102, 102, 156]}
            label_ids:                        # optional: mask values -> class (name or index; null: ignored)
              - {id: 10, class: floor}        # (or the short form: label_ids: {10: floor, 20: wall})
            color_labels:                     # optional: RGB colour annotations -> class
              - {color: [0, 0, 192], class: floor, name: Sidewalk}

        A class may carry ``id`` (its output index); then every class must, each index once.

        Raises:
            LabelSetError: missing or duplicate names or ids, a missing or malformed colour, an
                unknown key, a map entry naming no class, too many classes for uint8 labels.
        """
        where = source or default_name or "label set"
        if not isinstance(data, Mapping):
            raise LabelSetError(f"{where}: a label set is a mapping with a 'classes' list, got {type(data).__name__}")
        _refuse_unknown(data, _TOP_KEYS, where)
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise LabelSetError(f"{where}: 'name' must be a non-empty text, got {name!r}")
        name = name.strip()
        ignore_index = data.get("ignore_index", IGNORE_INDEX)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
            raise LabelSetError(f"{where}: ignore_index must be an integer in 0..255, got {ignore_index!r}")
        entries = data.get("classes")
        if not isinstance(entries, list) or not entries:
            raise LabelSetError(f"{where}: 'classes' must be a non-empty list of {{name, color}} entries")
        entries = _ordered_classes(entries, where)
        names: list[str] = []
        colors: list[tuple[int, int, int]] = []
        descriptions: list[str] = []
        for index, entry in enumerate(entries):
            class_name = entry.get("name")
            if isinstance(class_name, (int, float)) and not isinstance(class_name, bool):
                class_name = str(class_name)
            if not isinstance(class_name, str) or not class_name.strip():
                raise LabelSetError(f"{where}: class {index} has no name (got {class_name!r})")
            class_name = class_name.strip()
            if class_name in names:
                raise LabelSetError(f"{where}: duplicate class name {class_name!r} (classes {names.index(class_name)} "
                                    f"and {index}); each class needs its own name")
            if "color" not in entry or entry["color"] is None:
                raise LabelSetError(f"{where}: class {index} ({class_name!r}) has no color; give it "
                                    "color: [R, G, B] (0..255 each)")
            colors.append(_color(entry["color"], f"{where}: class {index} ({class_name!r})"))
            description = entry.get("description") or ""
            if not isinstance(description, str):
                raise LabelSetError(f"{where}: the description of class {class_name!r} must be text")
            names.append(class_name)
            descriptions.append(description.strip())
        if len(names) > ignore_index:
            raise LabelSetError(f"{where}: {len(names)} classes do not fit below the ignore value {ignore_index} "
                                "(labels are uint8; at most 255 classes with ignore_index 255)")
        label_ids = _raw_labels(data.get("label_ids"), "label_ids", names, ignore_index, where)
        color_labels = _raw_labels(data.get("color_labels"), "color_labels", names, ignore_index, where)
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise LabelSetError(f"{where}: 'description' must be text")
        return cls(name=name, class_names=tuple(names), colors=tuple(colors), ignore_index=ignore_index,
                   descriptions=tuple(descriptions) if any(descriptions) else (), label_ids=label_ids,
                   color_labels=color_labels, description=description.strip(), source=source)

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON (bag metadata)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


def _refuse_unknown(entry: Mapping[Any, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [str(key) for key in entry if key not in known]
    if unknown:
        raise LabelSetError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _ordered_classes(entries: list[Any], where: str) -> list[Mapping[str, Any]]:
    """The class entries in output order: as listed, or by their ``id`` when every entry has one."""
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            raise LabelSetError(f"{where}: class {index} ({entry!r}) has no color; give it "
                                "{name: ..., color: [R, G, B]}")
        if not isinstance(entry, Mapping):
            raise LabelSetError(f"{where}: class {index} must be a mapping {{name, color}}, got {entry!r}")
        _refuse_unknown(entry, _CLASS_KEYS, f"{where}: class {index}")
    with_id = [entry for entry in entries if "id" in entry]
    if not with_id:
        return list(entries)
    if len(with_id) != len(entries):
        raise LabelSetError(f"{where}: some classes have an 'id' and some do not; give every class one or none")
    by_id: dict[int, Mapping[str, Any]] = {}
    for entry in entries:
        class_id = entry["id"]
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < len(entries):
            raise LabelSetError(f"{where}: class {entry.get('name')!r} has id {class_id!r}; ids must be "
                                f"0..{len(entries) - 1}, one per class")
        if class_id in by_id:
            raise LabelSetError(f"{where}: duplicate class id {class_id} ({by_id[class_id].get('name')!r} and "
                                f"{entry.get('name')!r}); each class needs its own id")
        by_id[class_id] = entry
    return [by_id[i] for i in range(len(entries))]


def _color(value: Any, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise LabelSetError(f"{what}: color must be [R, G, B] with integers 0..255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _raw_labels(entries: Any, key: str, names: list[str], ignore_index: int, where: str) -> tuple[RawLabel, ...]:
    """The ``label_ids`` or ``color_labels`` section; ``label_ids`` may also be a ``{value: class}`` mapping."""
    if entries is None:
        return ()
    if key == "label_ids" and isinstance(entries, Mapping):
        entries = [{"id": value, "class": target} for value, target in entries.items()]
    if not isinstance(entries, list):
        raise LabelSetError(f"{where}: {key} must be a list of entries")
    raws: list[RawLabel] = []
    seen: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        what = f"{where}: {key}[{index}]"
        if not isinstance(entry, Mapping):
            raise LabelSetError(f"{what} must be a mapping, got {entry!r}")
        _refuse_unknown(entry, _RAW_KEYS, what)
        if "class" not in entry:
            raise LabelSetError(f"{what} has no 'class' (a class name, a class index, or null to ignore)")
        train_id = _class_index(entry["class"], names, ignore_index, what)
        raw_id = entry.get("id")
        color = _color(entry["color"], what) if entry.get("color") is not None else None
        if key == "label_ids":
            if isinstance(raw_id, bool) or not isinstance(raw_id, int) or not 0 <= raw_id <= 255:
                raise LabelSetError(f"{what}: id must be a label-file value 0..255, got {raw_id!r}")
            identity: Any = raw_id
        else:
            if color is None:
                raise LabelSetError(f"{what} has no color: [R, G, B]")
            identity = color
        if identity in seen:
            raise LabelSetError(f"{where}: {key} lists {'id' if key == 'label_ids' else 'color'} "
                                f"{list(identity) if key != 'label_ids' else identity} twice "
                                f"(entries {seen[identity]} and {index})")
        seen[identity] = index
        name = entry.get("name") or ""
        raws.append(RawLabel(name=str(name), train_id=train_id, id=raw_id if key == "label_ids" else None,
                             color=color))
    return tuple(raws)


def _class_index(target: Any, names: list[str], ignore_index: int, what: str) -> int:
    if target is None:
        return ignore_index
    if isinstance(target, int) and not isinstance(target, bool):
        if 0 <= target < len(names) or target == ignore_index:
            return target
        raise LabelSetError(f"{what}: class {target} is outside 0..{len(names) - 1}")
    if isinstance(target, str) and target.strip() in names:
        return names.index(target.strip())
    raise LabelSetError(f"{what}: class {target!r} is none of the classes ({', '.join(names)})")


# --------------------------------------------------------------------------------------------------
# Reading files and names


def read_label_set_file(path: str | Path) -> LabelSet:
    """Read a label set YAML file (see :meth:`LabelSet.from_dict`); its name defaults to the file's stem.

    Raises:
        LabelSetError: the file is missing, not YAML, or not a valid label set.
    """
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError:
        raise LabelSetError(f"label set file not found: {path}") from None
    return _read_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read_file(path: str, mtime_ns: int, size: int) -> LabelSet:
    # Keyed by modification time and size too: an edited file is read again.
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelSetError(f"cannot read label set file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LabelSetError(f"label set file {path} is not valid YAML: {exc}") from None
    return LabelSet.from_dict(data, source=path, default_name=Path(path).stem)


def looks_like_path(reference: str) -> bool:
    """Whether a label set reference names a file rather than a built-in set."""
    return reference.lower().endswith(LABEL_SET_SUFFIXES) or os.sep in reference or "/" in reference


def get_label_set(reference: str) -> LabelSet:
    """A built-in label set by name (``cityscapes`` or ``camvid``, any case) or a label set YAML file by path.

    Raises:
        LabelSetError: unknown name, or a file that cannot be read or is not a valid label set.
    """
    key = str(reference).strip()
    builtin = LABEL_SETS.get(key.lower())
    if builtin is not None:
        return builtin
    if key and (looks_like_path(key) or Path(key).expanduser().is_file()):
        return read_label_set_file(key)
    raise LabelSetError(f"unknown label set {reference!r}; known: {', '.join(sorted(LABEL_SETS))}, "
                        "or the path of a label set YAML file")


def require_same_classes(expected: LabelSet, given: LabelSet, *, expected_from: str, given_from: str) -> None:
    """Refuse a label set whose classes differ from the ones a checkpoint (or ground truth) was made with.

    Raises:
        LabelSetError: naming both sets, where each came from, and the first difference.
    """
    if expected.same_classes(given):
        return
    if expected.num_classes != given.num_classes:
        detail = f"{expected.num_classes} classes vs {given.num_classes}"
    else:
        index = next(i for i, (a, b) in enumerate(zip(expected.class_names, given.class_names)) if a != b)
        detail = f"class {index} is {expected.class_names[index]!r} vs {given.class_names[index]!r}"
    raise LabelSetError(f"label set mismatch: {expected_from} has {expected.summary()}, but {given_from} is "
                        f"{given.summary()} ({detail})")


def _builtin(name: str) -> LabelSet:
    return LabelSet.from_dict(yaml.safe_load((LABEL_SET_DIR / f"{name}.yaml").read_text()),
                              source=name, default_name=name)


CITYSCAPES = _builtin("cityscapes")
CAMVID = _builtin("camvid")
LABEL_SETS: dict[str, LabelSet] = {CITYSCAPES.name: CITYSCAPES, CAMVID.name: CAMVID}
if tuple(LABEL_SETS) != LABEL_SET_NAMES:  # names.py is torch- and file-free; the two must agree
    raise RuntimeError(f"names.LABEL_SET_NAMES {LABEL_SET_NAMES} does not list the shipped files {tuple(LABEL_SETS)}")

# Cityscapes: the official label table (label id, name, train id, colour), as read from cityscapes.yaml.
CityscapesLabel = RawLabel
CITYSCAPES_LABELS: tuple[RawLabel, ...] = CITYSCAPES.label_ids


def cityscapes_label_id_to_train_id() -> np.ndarray:
    """A 256-entry uint8 lookup table from Cityscapes label ids to train ids (255 = ignore)."""
    return CITYSCAPES.label_id_table()


def cityscapes_train_id_to_label_id() -> np.ndarray:
    """A 256-entry uint8 lookup table from train ids to label ids, for test-server PNGs (ignore -> 0)."""
    return CITYSCAPES.train_id_table()


# The SegNet CamVid release: index PNGs with classes 0..10 and 11 = void.
CAMVID_VOID_INDEX = next(raw.id for raw in CAMVID.label_ids if raw.train_id == CAMVID.ignore_index)

# The 32 classes of the original CamVid colour annotations (name -> RGB), and how they group into
# the 11 trained ones (anything unlisted is void); both read from camvid.yaml.
CAMVID_32_COLORS: dict[str, tuple[int, int, int]] = {raw.name: raw.color for raw in CAMVID.color_labels
                                                      if raw.color is not None}
CAMVID_32_TO_11: dict[str, str] = {raw.name: CAMVID.class_names[raw.train_id] for raw in CAMVID.color_labels
                                   if raw.train_id != CAMVID.ignore_index}


def camvid_index_to_train_id() -> np.ndarray:
    """A 256-entry lookup table for SegNet-style CamVid index PNGs: 0..10 kept, 11 (void) and up -> 255."""
    return CAMVID.label_id_table()


def camvid_color_to_train_id(rgb: np.ndarray) -> np.ndarray:
    """Map an HxWx3 RGB CamVid 32-class colour annotation to 11-class train ids (255 = void/unknown)."""
    return CAMVID.color_to_train_id(rgb)
