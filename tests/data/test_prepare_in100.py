"""Tests for the ImageNet-100 prepare (datasets.md §5, Appendix A)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from neco.config import DownloadConfig
from neco.data.sources.in100 import (
    In100Config,
    fetch_in100,
    prepare_in100,
    read_class_list,
    vendored_class_list,
)
from neco.download.archives import ArchiveConfig
from neco.download.extract import ExtractError
from neco.download.fetch import DownloadError
from tests.fixtures.coco_in100 import (
    IN100_UNLISTED,
    IN100_WNIDS,
    build_imagenet_tar,
    write_in100_list,
)

NET = DownloadConfig(retries=0, timeout_s=5.0, backoff_s=0.0)  # runtime.download


def _cfg(tar: Path, *, local_path: Path | None, class_list: Path | None,
         verify_counts: bool = False, md5: str | None = None) -> In100Config:
    arc = ArchiveConfig(filename=tar.name, urls=[],
                        md5=md5 or hashlib.md5(tar.read_bytes()).hexdigest(), sha1=None,
                        size=None, local_path=str(local_path) if local_path else None)
    return In100Config(archives={"imagenet_train": arc},
                       class_list=str(class_list) if class_list else None,
                       verify_counts=verify_counts, cache_dir=None)


@pytest.fixture
def user_tar(tmp_path: Path) -> Path:
    return build_imagenet_tar(tmp_path / "user")


def test_vendored_class_list_is_appendix_a() -> None:
    data = vendored_class_list().read_bytes()
    assert len(data) == 1000
    assert hashlib.md5(data).hexdigest() == "9974508e5d4cc0098b70e8b6a0fe6067"
    assert hashlib.sha1(data).hexdigest() == "e8fc67a3df1aed94d21b524a2c794ad86c2c93ff"
    wnids = read_class_list(vendored_class_list(), expect_md5="9974508e5d4cc0098b70e8b6a0fe6067")
    assert len(wnids) == 100 and wnids[:4] == ["n02869837", "n01749939", "n02488291",
                                               "n02107142"]
    assert wnids[-1] == "n02090622"


@pytest.mark.parametrize("data,needle", [
    (b"n02869837\r\nn01749939\r\n", "LF"),
    (b"n02869837\nn0174993\n", "line 2"),
    (b"n02869837\nn02869837\n", "duplicate"),
])
def test_class_list_errors(tmp_path: Path, data: bytes, needle: str) -> None:
    (tmp_path / "l.txt").write_bytes(data)
    with pytest.raises(ValueError, match=needle):
        read_class_list(tmp_path / "l.txt", expect_md5=None)
    with pytest.raises(ValueError, match="expected 9974508e"):
        read_class_list(tmp_path / "l.txt", expect_md5="9974508e5d4cc0098b70e8b6a0fe6067")


def test_fetch_requires_local_path(user_tar: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        fetch_in100(_cfg(user_tar, local_path=None, class_list=None), tmp_path / "raw",
                    download=NET, progress=False)
    assert "datasets.in100.archives.imagenet_train.local_path" in str(err.value)
    assert "account" in str(err.value)
    with pytest.raises(DownloadError, match="md5 mismatch"):
        fetch_in100(_cfg(user_tar, local_path=user_tar, class_list=None, md5="0" * 32),
                    tmp_path / "raw", download=NET, progress=False)


def test_selective_prepare(user_tar: Path, tmp_path: Path) -> None:
    cl = write_in100_list(tmp_path / "lists")
    cfg = _cfg(user_tar, local_path=user_tar, class_list=cl)
    fetch_in100(cfg, tmp_path / "raw", download=NET, progress=False)
    assert (tmp_path / "raw" / user_tar.name).read_bytes() == user_tar.read_bytes()
    out = tmp_path / "in100"
    prepare_in100(cfg, tmp_path / "raw", out, progress=False)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(IN100_WNIDS)
    assert not (out / "train" / IN100_UNLISTED).exists()
    want = sorted(f"{w}/{w}_{k}" for w in IN100_WNIDS for k in (1, 2))
    assert (out / "splits/train.txt").read_text() == "\n".join(want) + "\n"
    assert all((out / "train" / f"{i}.JPEG").is_file() for i in want)
    assert (out / "imagenet100.txt").read_bytes() == cl.read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["count"] == 4 and meta["class_names"] == list(IN100_WNIDS)
    assert not (tmp_path / ".in100.extract").exists()

    from neco.data.registry import open_images

    images = open_images("in100", out, "train")
    assert len(images) == 4
    sample = images[0]
    assert sample.id == want[0] and sample.image.shape == (6, 8, 3)
    assert sample.image.dtype == np.uint8


def test_production_checks(user_tar: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    cl = write_in100_list(tmp_path / "lists")
    fetch_in100(_cfg(user_tar, local_path=user_tar, class_list=cl), raw, download=NET,
                progress=False)
    with pytest.raises(ValueError, match="md5"):  # a custom list is not Appendix A
        prepare_in100(_cfg(user_tar, local_path=user_tar, class_list=cl, verify_counts=True),
                      raw, tmp_path / "a", progress=False)
    with pytest.raises(ExtractError, match=r"missing inner tar.*\(98 missing\)"):
        prepare_in100(_cfg(user_tar, local_path=user_tar, class_list=None), raw,
                      tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(FileNotFoundError, match=r"run the download@in100 stage first"):
        prepare_in100(_cfg(user_tar, local_path=user_tar, class_list=cl), tmp_path / "none",
                      tmp_path / "c", progress=False)
