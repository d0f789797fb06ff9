"""Split files and ``meta.json`` of a prepared dataset (datasets.md §0, §9).

Split files (``splits/<name>.txt``) hold ids in byte order, one per line, LF line endings, a
trailing newline and no duplicates; their md5 is recorded in ``meta.json`` and every consumer
reads only these lists. Raw id lists from archives (VOC ``ImageSets``, SBD, Hummingbird file
sets) are parsed leniently with :func:`parse_id_list` and always re-written canonically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neco.data.errors import DataError
from neco.io import file_digest, write_bytes, write_json

META_FIELDS = (
    "name",
    "num_classes",
    "ignore_index",
    "class_names",
    "splits",
    "sources",
    "converter_version",
    "params",
)


@dataclass(frozen=True)
class SplitRecord:
    """What ``meta.json`` records about one split file.

    Attributes:
        count: number of ids.
        md5: md5 hex digest of the file's bytes.
    """

    count: int
    md5: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form ``{"count": n, "md5": h}``."""
        return {"count": self.count, "md5": self.md5}


def md5_bytes(data: bytes) -> str:
    """md5 hex digest of ``data``."""
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path) -> str:
    """md5 hex digest of a file (``neco.io.file_digest``)."""
    return file_digest(path, "md5")


def _check_id(item: str, source: str) -> None:
    if not item or item != item.strip() or any(c in item for c in "\n\r\t "):
        raise DataError(f"{source}: invalid id {item!r} (empty or containing whitespace)")


def canonical_split_bytes(ids: Iterable[str], *, source: str) -> bytes:
    """The canonical bytes of a split: sorted ids, LF, trailing newline.

    Args:
        ids: ids in any order; duplicates are an error.
        source: what the ids are (used in error messages).

    Raises:
        DataError: on duplicates, empty input or ids containing whitespace.
    """
    items = sorted(ids)
    if not items:
        raise DataError(f"{source}: empty split")
    for i, item in enumerate(items):
        _check_id(item, source)
        if i and items[i - 1] == item:
            raise DataError(f"{source}: duplicate id {item!r}")
    return ("\n".join(items) + "\n").encode("utf-8")


def write_split(path: Path, ids: Iterable[str]) -> SplitRecord:
    """Write ``ids`` canonically (sorted, LF, trailing newline) to ``path`` atomically.

    Returns:
        count and md5 of the written bytes.
    """
    data = canonical_split_bytes(ids, source=str(path))
    write_bytes(path, data)
    return SplitRecord(count=data.count(b"\n"), md5=md5_bytes(data))


def read_split(path: Path) -> list[str]:
    """Read and validate a canonical split file.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: naming the file, if it is empty, lacks the trailing newline, contains CR,
            blank lines or whitespace, is not UTF-8, or is not strictly sorted (unsorted or
            duplicates).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: empty split file")
    if b"\r" in data:
        raise DataError(f"{path}: split file must use LF line endings, found CR")
    if not data.endswith(b"\n"):
        raise DataError(f"{path}: split file must end with a newline")
    try:
        ids = data[:-1].decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: split file is not UTF-8 text: {err}") from err
    for i, item in enumerate(ids):
        if not item or item != item.strip() or " " in item or "\t" in item:
            raise DataError(f"{path}: line {i + 1}: invalid id {item!r}")
        if i and ids[i - 1] >= item:
            what = "duplicate" if ids[i - 1] == item else "unsorted"
            raise DataError(
                f"{path}: line {i + 1}: {what} id {item!r} after {ids[i - 1]!r}; "
                "split files must be sorted in byte order without duplicates"
            )
    return ids


def parse_id_list(data: bytes, *, source: str) -> list[str]:
    """Parse a raw id list (one id per line), keeping its order.

    Surrounding whitespace and blank lines are tolerated (VOC/SBD lists vary); duplicates and
    ids with inner whitespace are errors.

    Args:
        data: raw file bytes.
        source: file name for error messages.

    Raises:
        DataError: naming ``source``, for non-UTF-8 bytes, duplicates or invalid ids.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: id list is not UTF-8 text: {err}") from err
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    seen: set[str] = set()
    for item in ids:
        _check_id(item, source)
        if item in seen:
            raise DataError(f"{source}: duplicate id {item!r}")
        seen.add(item)
    return ids


def build_meta(
    *,
    name: str,
    num_classes: int,
    ignore_index: int,
    class_names: Sequence[str],
    splits: Mapping[str, SplitRecord],
    sources: Mapping[str, Any],
    converter_version: str,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Assemble the ``meta.json`` object of datasets.md §9.

    Raises:
        ValueError: if ``class_names`` does not have ``num_classes`` entries.
    """
    if len(class_names) != num_classes:
        raise ValueError(
            f"meta for {name!r}: {len(class_names)} class names for num_classes={num_classes}"
        )
    return {
        "name": name,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "class_names": list(class_names),
        "splits": {k: splits[k].as_dict() for k in sorted(splits)},
        "sources": dict(sources),
        "converter_version": converter_version,
        "params": dict(params),
    }


def write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json`` atomically (sorted keys, indented, trailing newline)."""
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"{path}: meta is missing field(s) {missing}")
    write_json(path, dict(meta))


def read_meta(path: Path, *, source: str | None = None) -> dict[str, Any]:
    """Read a ``meta.json`` and check that every §9 field is present.

    Args:
        path: the metadata file of a prepared tree.
        source: the dataset source that writes it (for the hint: stage ``prepare@<source>``).

    Raises:
        FileNotFoundError: naming the file and the stage that writes it.
        DataError: naming the file, for invalid JSON or missing fields.
    """
    if not path.is_file():
        stage = f"prepare@{source or '<source>'}"
        raise FileNotFoundError(f"{path}: meta file not found; run the {stage} stage "
                                f"(`dvc repro {stage}`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: invalid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing field(s) {missing}")
    return meta
