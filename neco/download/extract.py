"""Safe, idempotent archive extraction (datasets.md §8).

* ``extract_archive`` unpacks a tar / tar.gz / tgz / zip (format sniffed from the bytes) into a
  hidden temporary directory next to ``dest`` and renames it onto ``dest`` when complete.
  Absolute paths and ``..`` components are refused up front; tars then go through tarfile's
  ``data`` extraction filter (links pointing outside the target, device/FIFO members), zips
  through ``ZipFile.extract`` with symlink/device members refused. Every refusal names the
  member.
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
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from neco.download.fetch import read_marker
from neco.io import DiskFullError, file_digest, is_disk_full

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
    return "md5:" + file_digest(archive, "md5")


def _check_name(name: str, archive: Path) -> None:
    """Refuse an absolute member name or one with a ``..`` component (``\\`` read as ``/``).

    tarfile's ``data`` filter would strip a leading ``/`` and zipfile drops ``..`` components,
    both silently; such members are refused instead, naming them.
    """
    posix = name.replace("\\", "/")  # zips written on Windows
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise ExtractError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in posix.split("/"):
        raise ExtractError(f"{archive}: member {name!r} has a '..' component; refused")


def _copy_stream(src: IO[bytes], path: Path) -> None:
    with open(path, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def _extract_tar(archive: Path, root: Path) -> None:
    """Extract with tarfile's ``data`` filter: no member or link may leave ``root``, no
    device/FIFO members, no ownership, sane permissions (PEP 706)."""
    if not hasattr(tarfile, "data_filter"):
        raise ExtractError(f"{archive}: safe tar extraction needs tarfile extraction filters "
                           f"(Python 3.10.12+, 3.11.4+ or 3.12+); this is Python "
                           f"{sys.version.split()[0]}")
    try:
        tf = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise ExtractError(f"{archive}: not a readable tar archive: {err}") from err
    with tf:
        tf.errorlevel = 2  # also raise tarfile.ExtractError (e.g. a hard link without target)
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ExtractError(f"{archive}: corrupt tar archive: {err}") from err
        for m in members:  # before writing anything
            _check_name(m.name, archive)
        try:
            tf.extractall(root, members, filter="data")
        except tarfile.FilterError as err:
            m = err.tarinfo
            link = f" -> {m.linkname!r}" if m.issym() or m.islnk() else ""
            raise ExtractError(f"{archive}: member {m.name!r}{link} refused: {err}") from err
        except (tarfile.TarError, OSError, EOFError, KeyError) as err:
            # KeyError: a hard link whose target is not in the archive
            _raise_if_disk_full(err, root, archive)
            raise ExtractError(f"{archive}: corrupt tar archive: {err}") from err


def _raise_if_disk_full(err: BaseException, root: Path, archive: Path) -> None:
    """A full disk while extracting is not a corrupt archive: raise DiskFullError instead."""
    if isinstance(err, DiskFullError):
        raise err
    if is_disk_full(err, root):
        raise DiskFullError(root.parent, f"; extracting {archive.name}") from err


def _extract_zip(archive: Path, root: Path) -> None:
    """Extract with ``ZipFile.extract`` (never creates links); special members are refused."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ExtractError(f"{archive}: not a readable zip archive: {err}") from err
    with zf:
        infos = zf.infolist()
        for info in infos:  # before writing anything
            _check_name(info.filename, archive)
            mode = info.external_attr >> 16  # Unix mode when written on Unix, else 0
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "a symlink" if stat.S_ISLNK(mode) else "a device/FIFO/socket"
                raise ExtractError(f"{archive}: member {info.filename!r} is {kind}; refused")
        for info in infos:
            try:
                zf.extract(info, root)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
                _raise_if_disk_full(err, root, archive)
                raise ExtractError(f"{archive}: corrupt member {info.filename!r}: "
                                   f"{err}") from err


def _done_marker(dest: Path, checksum: str,
                 selected: list[str] | None = None) -> dict[str, Any] | None:
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
    except OSError as err:
        _raise_if_disk_full(err, tmp, archive)
        raise
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
    except OSError as err:
        _raise_if_disk_full(err, tmp, archive)
        raise
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
            base = m.name[2:] if m.name.startswith("./") else m.name
            if not m.isfile() or base in ("", ".", "..") or "/" in base or "\\" in base:
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
