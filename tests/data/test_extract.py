"""Tests for neco.download.extract: safety, idempotence, nested zips, selective inner tars."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from neco.download.extract import (
    MARKER,
    ExtractError,
    archive_checksum,
    extract_archive,
    extract_nested_zips,
    extract_selected_inner_tars,
)
from tests.fixtures.coco_in100 import IN100_UNLISTED, IN100_WNIDS, build_imagenet_tar, tar_bytes


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w") -> Path:
    """members: (name, data or None, tar type; linkname taken from data for links)."""
    with tarfile.open(path, mode) as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = (data or b"").decode()
                tf.addfile(info)
            elif kind == tarfile.REGTYPE:
                info.size = len(data or b"")
                tf.addfile(info, io.BytesIO(data or b""))
            else:
                tf.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".extract-" in p.name)


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_roundtrip_marker_and_noop(tmp_path: Path, suffix: str, mode: str) -> None:
    arc = _tar(tmp_path / f"a{suffix}", [("top/", None, tarfile.DIRTYPE),
                                        ("top/x.txt", b"hello", tarfile.REGTYPE),
                                        ("top/sub/y.bin", b"\x00\x01", tarfile.REGTYPE),
                                        ("top/link", b"x.txt", tarfile.SYMTYPE),
                                        ("top/hard", b"top/x.txt", tarfile.LNKTYPE)], mode)
    dest = extract_archive(arc, tmp_path / "out")
    assert (dest / "top/x.txt").read_bytes() == b"hello"
    assert (dest / "top/sub/y.bin").read_bytes() == b"\x00\x01"
    assert (dest / "top/link").read_bytes() == b"hello"  # inside-pointing symlink is fine
    assert (dest / "top/hard").read_bytes() == b"hello"
    assert json.loads((dest / MARKER).read_text())["checksum"] == archive_checksum(arc)
    (dest / "sentinel").write_text("kept")
    extract_archive(arc, dest)  # same archive: no-op
    assert (dest / "sentinel").exists()
    _tar(arc, [("top/x.txt", b"changed", tarfile.REGTYPE)], mode)
    extract_archive(arc, dest)  # different archive: re-extracted from scratch
    assert not (dest / "sentinel").exists() and (dest / "top/x.txt").read_bytes() == b"changed"
    assert _leftovers(tmp_path) == []


def test_zip_roundtrip_and_download_marker_checksum(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "a.zip", {"d/": b"", "d/x.txt": b"zip!"})
    (tmp_path / "a.zip.verified").write_text(json.dumps(
        {"size": arc.stat().st_size, "md5": "abc123"}))
    assert archive_checksum(arc) == "md5:abc123"  # no re-hash of a verified download
    dest = extract_archive(arc, tmp_path / "out")
    assert (dest / "d/x.txt").read_bytes() == b"zip!"
    assert json.loads((dest / MARKER).read_text())["checksum"] == "md5:abc123"


@pytest.mark.parametrize("members,needle", [
    ([("../x", b"evil", tarfile.REGTYPE)], "'../x'"),
    ([("ok/../../x", b"evil", tarfile.REGTYPE)], "'ok/../../x'"),
    ([("/etc/evil", b"evil", tarfile.REGTYPE)], "'/etc/evil'"),
    ([("link", b"../../etc/passwd", tarfile.SYMTYPE)], "'link'"),
    ([("link", b"/etc/passwd", tarfile.SYMTYPE)], "'link'"),
    ([("hard", b"../outside", tarfile.LNKTYPE)], "'../outside'"),
    ([("fifo", None, tarfile.FIFOTYPE)], "'fifo'"),
    ([("dev", None, tarfile.CHRTYPE)], "'dev'"),
    # A symlink inside the tree used to write outside it: l1 -> ".", then l1/l2 -> "..".
    ([("l1", b".", tarfile.SYMTYPE), ("l1/l2", b"..", tarfile.SYMTYPE)], "'l1/l2'"),
])
def test_unsafe_tar_members_are_refused(tmp_path: Path, members: list, needle: str) -> None:
    arc = _tar(tmp_path / "bad.tar", [("fine.txt", b"ok", tarfile.REGTYPE), *members])
    with pytest.raises(ExtractError, match="refused") as err:
        extract_archive(arc, tmp_path / "sub" / "out")
    assert needle in str(err.value)
    assert not (tmp_path / "sub" / "out").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()
    assert _leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("name", ["../x", "/abs.txt", "a/../../x"])
def test_unsafe_zip_members_are_refused(tmp_path: Path, name: str) -> None:
    arc = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok", name: b"evil"})
    with pytest.raises(ExtractError, match="refused"):
        extract_archive(arc, tmp_path / "sub" / "out")
    assert not (tmp_path / "sub" / "out").exists()


@pytest.mark.parametrize("target", ["../../secret", "fine.txt"])
def test_zip_symlinks_are_refused(tmp_path: Path, target: str) -> None:
    """ZipFile.extract would write a symlink member as a regular file: refuse it instead."""
    arc = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok"}, symlinks={"ln": target})
    with pytest.raises(ExtractError, match="'ln' is a symlink; refused"):
        extract_archive(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_device_member_is_refused(tmp_path: Path) -> None:
    arc = tmp_path / "bad.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        info = zipfile.ZipInfo("fifo")
        info.create_system = 3
        info.external_attr = 0o010644 << 16  # S_IFIFO
        zf.writestr(info, b"")
    with pytest.raises(ExtractError, match="'fifo' is a device/FIFO/socket; refused"):
        extract_archive(arc, tmp_path / "out")


@pytest.mark.parametrize("member,cause", [
    (("/etc/evil", b"evil", tarfile.REGTYPE), None),  # the filter would strip the '/'
    (("../evil", b"evil", tarfile.REGTYPE), None),
    (("a/../evil", b"evil", tarfile.REGTYPE), None),  # stays inside, but '..' is refused too
    (("ln", b"../../etc/passwd", tarfile.SYMTYPE), tarfile.LinkOutsideDestinationError),
    (("ln", b"/etc/passwd", tarfile.SYMTYPE), tarfile.AbsoluteLinkError),
    (("hard", b"../../etc/passwd", tarfile.LNKTYPE), tarfile.LinkOutsideDestinationError),
    (("fifo", None, tarfile.FIFOTYPE), tarfile.SpecialFileError),
    (("chr", None, tarfile.CHRTYPE), tarfile.SpecialFileError),
    (("blk", None, tarfile.BLKTYPE), tarfile.SpecialFileError),
])
def test_tar_data_filter_refusals_name_the_member(tmp_path: Path, member: tuple,
                                                   cause: type | None) -> None:
    """Links and special files are refused by tarfile's ``data`` filter, names up front."""
    arc = _tar(tmp_path / "bad.tar", [("fine.txt", b"ok", tarfile.REGTYPE), member])
    with pytest.raises(ExtractError, match="refused") as err:
        extract_archive(arc, tmp_path / "sub" / "out")
    assert f"member {member[0]!r}" in str(err.value) and str(arc) in str(err.value)
    if cause is None:
        assert err.value.__cause__ is None
    else:
        assert isinstance(err.value.__cause__, cause)
        assert isinstance(err.value.__cause__, tarfile.FilterError)
        if member[1] is not None:
            assert repr(member[1].decode()) in str(err.value)  # the link target
    assert not (tmp_path / "sub" / "out").exists() and _leftovers(tmp_path / "sub") == []


def test_tar_hard_link_without_target_is_an_error(tmp_path: Path) -> None:
    arc = _tar(tmp_path / "h.tar", [("hard", b"missing", tarfile.LNKTYPE)])
    with pytest.raises(ExtractError, match="missing"):
        extract_archive(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_without_extraction_filters_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    arc = _tar(tmp_path / "a.tar", [("x.txt", b"x", tarfile.REGTYPE)])
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(ExtractError, match="extraction filters"):
        extract_archive(arc, tmp_path / "out")


@pytest.mark.parametrize("content", [b"not an archive at all", b"PK\x03\x04garbage"])
def test_corrupt_archive(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "c.zip").write_bytes(content)
    with pytest.raises(ExtractError, match="c.zip"):
        extract_archive(tmp_path / "c.zip", tmp_path / "out")


def test_truncated_zip_member_is_named(tmp_path: Path) -> None:
    good = _zip(tmp_path / "g.zip", {"a.bin": bytes(range(256)) * 200}).read_bytes()
    (tmp_path / "t.tar").write_bytes(good[: len(good) // 2])  # not a tar, not a valid zip
    with pytest.raises(ExtractError):
        extract_archive(tmp_path / "t.tar", tmp_path / "out")


def test_nested_zips(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as inner:
        inner.writestr("panoptic_val2017/000000000139.png", b"png")
    outer = _zip(tmp_path / "outer.zip", {"annotations/panoptic_val2017.zip": buf.getvalue(),
                                          "annotations/panoptic_val2017.json": b"{}"})
    root = extract_archive(outer, tmp_path / "out")
    dirs = extract_nested_zips(root, ["**/panoptic_val2017.zip"])
    assert dirs == [root / "annotations/panoptic_val2017.zip.d"]
    assert (dirs[0] / "panoptic_val2017/000000000139.png").read_bytes() == b"png"
    assert extract_nested_zips(root, ["**/panoptic_val2017.zip"]) == dirs  # idempotent
    with pytest.raises(ExtractError, match="panoptic_train2017"):
        extract_nested_zips(root, ["**/panoptic_train2017.zip"])


def test_selective_inner_tars(tmp_path: Path) -> None:
    arc = build_imagenet_tar(tmp_path / "raw")
    counts = extract_selected_inner_tars(arc, tmp_path / "out", IN100_WNIDS)
    assert counts == {w: 2 for w in IN100_WNIDS}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [MARKER, *IN100_WNIDS])
    assert sorted(p.name for p in (tmp_path / "out" / IN100_WNIDS[0]).iterdir()) == [
        f"{IN100_WNIDS[0]}_1.JPEG", f"{IN100_WNIDS[0]}_2.JPEG"]
    assert not (tmp_path / "escape.JPEG").exists()
    (tmp_path / "out" / "sentinel").write_text("")
    assert extract_selected_inner_tars(arc, tmp_path / "out", IN100_WNIDS) == counts
    assert (tmp_path / "out" / "sentinel").exists()  # no-op rerun
    # The unlisted tar would be refused if it were opened:
    with pytest.raises(ExtractError, match="escape"):
        extract_selected_inner_tars(arc, tmp_path / "out2", [IN100_UNLISTED])
    with pytest.raises(ExtractError, match="n09999999.tar"):
        extract_selected_inner_tars(arc, tmp_path / "out3", [*IN100_WNIDS, "n09999999"])
    assert not (tmp_path / "out3").exists()


def test_selective_rejects_nested_paths_in_inner_tar(tmp_path: Path) -> None:
    inner = tar_bytes({"sub/n01_1.JPEG": b"x"})
    (tmp_path / "o.tar").write_bytes(tar_bytes({"n01.tar": inner}))
    with pytest.raises(ExtractError, match="plain file name"):
        extract_selected_inner_tars(tmp_path / "o.tar", tmp_path / "out", ["n01"])
