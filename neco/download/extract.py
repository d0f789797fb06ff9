"""Safe, idempotent archive extraction (datasets.md §8).

* ``extract_archive`` unpacks a tar / tar.gz / tgz / zip (format sniffed from the bytes) into a
  hidden temporary directory next to ``dest`` and renames it onto ``dest`` when complete. Every
  member is validated first: absolute paths, ``..`` components, links that point outside the
  target and device/FIFO members are refused with an error naming the member.
* ``dest/.extracted.json`` records the archive's checksum; re-running with the same archive is
  a no-op. The checksum comes from the download stage's ``.verified`` marker when it matches
  the file's size, so an 18 GB archive is not re-hashed; otherwise the archive is hashed.
* ``extract_nested_zips`` unpacks zips found inside an extracted tree (COCO annotations).
* ``extract_selected_inner_tars`` streams an outer tar of inner tars (ImageNet train) and
  unpacks only the wanted inner tars, skipping the others without reading them as tars.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Optional

from neco.download.fetch import hash_file, read_marker

log = logging.getLogger(__name__)

MARKER = ".extracted.json"
CHUNK = 1 << 20


class ExtractError(RuntimeError):
    """An archive is corrupt, unsupported or contains an unsafe member."""


def archive_checksum(archive: Path) -> str:
    """``"<algo>:<hex>"`` of ``archive``, from its ``.verified`` marker when valid, else md5."""
    info = read_marker(archive)
    if info is not None:
        for algo in ("md5", "sha1", "sha256"):
            if isinstance(info.get(algo), str):
                return f"{algo}:{info[algo]}"
    return "md5:" + hash_file(archive, ["md5"])["md5"]


def _safe_name(name: str, archive: Path) -> str:
    """Normalised relative POSIX path of a member, or ExtractError naming it."""
    if "\\" in name:
        name = name.replace("\\", "/")  # zips written on Windows
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ExtractError(f"{archive}: member {name!r} has an absolute path; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ExtractError(f"{archive}: member {name!r} escapes the target ('..'); refused")
    if not parts:
        return ""
    return "/".join(parts)


def _check_link(name: str, target: str, archive: Path, *, relative_to_member: bool) -> str:
    """Validate a link target stays inside the extraction root; returns the resolved path."""
    if target.startswith("/"):
        raise ExtractError(f"{archive}: link member {name!r} -> {target!r} is absolute; refused")
    base = posixpath.dirname(name) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise ExtractError(f"{archive}: link member {name!r} -> {target!r} points outside "
                           "the target; refused")
    return resolved


def _copy_stream(src: IO[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()  # never write through a link created by an earlier member
    with open(path, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def _target(root: Path, name: str, archive: Path) -> Path:
    """``root/name``, refusing paths whose parent directories pass through a symlink."""
    path = root / name
    parent = Path(os.path.realpath(path.parent))
    if parent != root.resolve() / posixpath.dirname(name):
        raise ExtractError(f"{archive}: member {name!r} is written through a symlink; refused")
    return path


def _extract_tar(archive: Path, root: Path) -> None:
    try:
        tf = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise ExtractError(f"{archive}: not a readable tar archive: {err}") from err
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ExtractError(f"{archive}: corrupt tar archive: {err}") from err
        plan = []
        for m in members:  # validate everything before writing anything
            name = _safe_name(m.name, archive)
            if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
                raise ExtractError(f"{archive}: member {m.name!r} is a device/FIFO; refused")
            if m.issym():
                _check_link(name, m.linkname, archive, relative_to_member=True)
            elif m.islnk():
                _safe_name(m.linkname, archive)
            elif not (m.isfile() or m.isdir()):
                raise ExtractError(f"{archive}: member {m.name!r} has unsupported type "
                                   f"{m.type!r}; refused")
            if name:
                plan.append((m, name))
        for m, name in plan:
            path = _target(root, name, archive)
            try:
                if m.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                elif m.issym():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(m.linkname, path)
                elif m.islnk():
                    src = _target(root, _safe_name(m.linkname, archive), archive)
                    if not src.is_file() or src.is_symlink():
                        raise ExtractError(f"{archive}: hard link {m.name!r} -> "
                                           f"{m.linkname!r} has no regular target")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, path)
                else:
                    fobj = tf.extractfile(m)
                    assert fobj is not None
                    with fobj:
                        _copy_stream(fobj, path)
            except (tarfile.TarError, EOFError, zipfile.BadZipFile) as err:
                raise ExtractError(f"{archive}: corrupt member {m.name!r}: {err}") from err


def _extract_zip(archive: Path, root: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ExtractError(f"{archive}: not a readable zip archive: {err}") from err
    with zf:
        plan: list[tuple[zipfile.ZipInfo, str, Optional[str]]] = []
        for info in zf.infolist():
            name = _safe_name(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8")
                _check_link(name, target, archive, relative_to_member=True)
                plan.append((info, name, target))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise ExtractError(f"{archive}: member {info.filename!r} is a device/FIFO; "
                                   "refused")
            elif name:
                plan.append((info, name, None))
        for info, name, link in plan:
            path = _target(root, name, archive)
            if link is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link, path)
            elif info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
            else:
                try:
                    with zf.open(info) as src:
                        _copy_stream(src, path)
                except (zipfile.BadZipFile, EOFError, OSError) as err:
                    raise ExtractError(f"{archive}: corrupt member {info.filename!r}: "
                                       f"{err}") from err


def _done_marker(dest: Path, checksum: str,
                 selected: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    """The completion marker of ``dest`` if it matches this archive (and selection)."""
    marker = dest / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return None
    if info.get("checksum") == checksum and info.get("selected") == selected:
        return dict(info)
    return None


def _publish(tmp: Path, dest: Path, marker: dict[str, Any]) -> None:
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    if dest.exists() or dest.is_symlink():
        shutil.rmtree(dest)  # stale or incomplete earlier extraction
    os.rename(tmp, dest)


def _tempdir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` so that its top-level entries appear under ``dest``.

    Args:
        archive: a tar, tar.gz/tgz (any tarfile compression) or zip file.
        dest: target directory; replaced as a whole, only once extraction succeeded.

    Returns:
        ``dest``.

    Raises:
        ExtractError: corrupt/unsupported archive, or an unsafe member (named).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ExtractError(f"{archive}: archive not found")
    checksum = archive_checksum(archive)
    if _done_marker(dest, checksum) is not None:
        return dest
    with open(archive, "rb") as f:
        is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # magic, not a tail scan
    if not is_zip and not tarfile.is_tarfile(archive):
        raise ExtractError(f"{archive}: neither a zip nor a tar archive (corrupt or truncated?)")
    tmp = _tempdir(dest)
    try:
        (_extract_zip if is_zip else _extract_tar)(archive, tmp)
        _publish(tmp, dest, {"archive": archive.name, "checksum": checksum, "selected": None})
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("extracted %s -> %s", archive.name, dest)
    return dest


def extract_nested_zips(root: Path, patterns: Sequence[str]) -> list[Path]:
    """Extract each zip under ``root`` matching a glob in ``patterns`` next to itself.

    ``a/b/x.zip`` is extracted to ``a/b/x.zip.d/`` (idempotent, see ``extract_archive``).

    Args:
        root: an extracted tree.
        patterns: globs relative to ``root``, e.g. ``["annotations/panoptic_val2017.zip"]``.

    Returns:
        The extraction directories, in pattern then name order.

    Raises:
        ExtractError: when a pattern matches nothing (naming it) or a nested zip is unsafe.
    """
    out = []
    for pattern in patterns:
        matches = sorted(p for p in Path(root).glob(pattern) if p.is_file())
        if not matches:
            raise ExtractError(f"{root}: no nested archive matches {pattern!r}")
        for path in matches:
            out.append(extract_archive(path, path.with_name(path.name + ".d")))
    return out


def _stream_members(tf: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tf
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ExtractError(f"{archive}: corrupt tar stream: {err}") from err


def extract_selected_inner_tars(archive: Path, dest: Path,
                                names: Collection[str]) -> dict[str, int]:
    """Stream an outer tar of ``<name>.tar`` members; unpack only the wanted ones.

    Inner tar ``<name>.tar`` is unpacked flat into ``dest/<name>/`` (ImageNet:
    ``n01440764.tar`` -> ``dest/n01440764/n01440764_10026.JPEG``). Unlisted inner tars are
    skipped by the stream without being opened. Each inner member must be a regular file with a
    plain name. Atomic (temp dir + rename) and idempotent (marker with checksum and names).

    Args:
        archive: the outer tar (uncompressed or compressed; read sequentially).
        dest: target directory.
        names: inner tar stems to unpack.

    Returns:
        name -> number of files unpacked.

    Raises:
        ExtractError: corrupt archive, unsafe inner member, or wanted names missing (listed).
    """
    archive, dest = Path(archive), Path(dest)
    wanted = sorted(set(names))
    checksum = archive_checksum(archive)
    done = _done_marker(dest, checksum, wanted)
    if done is not None:
        return {k: int(v) for k, v in done["counts"].items()}
    counts: dict[str, int] = {}
    tmp = _tempdir(dest)
    try:
        try:
            outer = tarfile.open(archive, mode="r|*")
        except (tarfile.TarError, OSError) as err:
            raise ExtractError(f"{archive}: not a readable tar archive: {err}") from err
        with outer:
            for m in _stream_members(outer, archive):
                base = posixpath.basename(m.name)
                stem = base[:-4] if base.endswith(".tar") else None
                if not m.isfile() or stem not in wanted:
                    continue
                if stem in counts:
                    raise ExtractError(f"{archive}: inner tar {m.name!r} appears twice")
                fobj = outer.extractfile(m)
                assert fobj is not None
                counts[stem] = _extract_flat(fobj, tmp / stem, f"{archive}:{m.name}")
        missing = [n for n in wanted if n not in counts]
        if missing:
            raise ExtractError(f"{archive}: missing inner tar(s) "
                               f"{[n + '.tar' for n in missing][:10]} ({len(missing)} missing)")
        _publish(tmp, dest, {"archive": archive.name, "checksum": checksum,
                             "selected": wanted, "counts": counts})
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts


def _extract_flat(fobj: IO[bytes], out_dir: Path, what: str) -> int:
    """Unpack a (streamed) inner tar whose members are plain files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    try:
        inner = tarfile.open(fileobj=fobj, mode="r|*")
    except (tarfile.TarError, OSError) as err:
        raise ExtractError(f"{what}: not a readable tar: {err}") from err
    with inner:
        for m in _stream_members(inner, Path(what)):
            if m.isdir():
                continue
            base = posixpath.basename(m.name.rstrip("/"))
            if not m.isfile() or _safe_name(m.name, Path(what)) != base:
                raise ExtractError(f"{what}: member {m.name!r} is not a plain file name; refused")
            if base.startswith("."):
                log.warning("%s: skipping hidden member %r", what, m.name)
                continue
            src = inner.extractfile(m)
            assert src is not None
            with src:
                _copy_stream(src, out_dir / base)
            n += 1
    return n
