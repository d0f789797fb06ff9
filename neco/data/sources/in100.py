"""ImageNet-100 prepare for NeCo training (datasets.md §5, §9).

The source is ``ILSVRC2012_img_train.tar`` (1,000 inner tars ``nXXXXXXXX.tar``), which needs an
image-net.org login: it is never downloaded automatically; the user points
``datasets.in100.archives.imagenet_train.local_path`` at their copy and the download stage
verifies it (md5 ``1d675b47d978889d74fa0da5fadfb00e``) and hard-links it into ``data/raw``.
The prepare stage streams the outer tar once and unpacks only the 100 listed inner tars::

    imagenet100.txt                  the class list used
    train/<wnid>/<file>.JPEG
    splits/train.txt                 "<wnid>/<stem>", sorted
    meta.json
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from neco.config import ConfigError, DownloadConfig
from neco.data.errors import DataError
from neco.data.label_png import decode_images
from neco.data.meta import build_meta, write_meta, write_split
from neco.data.staging import log_progress, staged_dir
from neco.download.archives import ArchiveConfig
from neco.download.extract import archive_checksum, extract_selected_inner_tars
from neco.download.fetch import fetch_archives
from neco.io import write_bytes

CONVERTER_VERSION = "in100-1"
ARCHIVE_KEY = "imagenet_train"
PARAM_KEY = f"datasets.in100.archives.{ARCHIVE_KEY}"
CLASS_LIST_MD5 = "9974508e5d4cc0098b70e8b6a0fe6067"  # datasets.md Appendix A
EXPECTED_IMAGES = 126_689  # asserted by the NeCo data module
WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class In100Config:
    """``datasets.in100`` params.

    Attributes:
        archives: key ``imagenet_train`` (``local_path`` required, ``urls`` ignored).
        class_list: path of a wnid list, or None for the vendored ``imagenet100.txt``.
        verify_counts: production mode: assert the class-list md5 and 126,689 images.
        cache_dir: optional shared directory of verified archives.
    """

    archives: dict[str, ArchiveConfig]
    class_list: str | None
    verify_counts: bool
    cache_dir: str | None


def vendored_class_list() -> Path:
    """Path of the vendored ``imagenet100.txt`` (Appendix A, 1,000 bytes)."""
    return Path(__file__).with_name("imagenet100.txt")


def read_class_list(path: Path, *, expect_md5: str | None) -> list[str]:
    """Read a wnid list: one ``nXXXXXXXX`` per line, LF, unique.

    Args:
        path: the list.
        expect_md5: if set, the file's md5 must equal it.

    Raises:
        FileNotFoundError: naming the file (``datasets.in100.class_list``).
        DataError: naming the file and line, or the expected vs actual md5.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: class list not found (datasets.in100.class_list)")
    data = Path(path).read_bytes()
    if expect_md5 is not None and hashlib.md5(data).hexdigest() != expect_md5:
        raise DataError(f"{path}: md5 {hashlib.md5(data).hexdigest()}, expected {expect_md5} "
                        "(the ImageNet-100 list of datasets.md Appendix A)")
    if b"\r" in data or not data.endswith(b"\n"):
        raise DataError(f"{path}: class list must use LF line endings with a trailing newline")
    try:
        wnids = data.decode("ascii").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: class list is not ASCII text: {err}") from err
    for n, w in enumerate(wnids, 1):
        if not WNID_RE.match(w):
            raise DataError(f"{path}: line {n}: {w!r} is not a wnid like n01440764")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: duplicate wnids")
    return wnids


def fetch_in100(
    cfg: In100Config, raw_dir: Path, *, download: DownloadConfig, progress: bool
) -> None:
    """Download stage for ImageNet-100: verify the user's archive and link it into ``raw_dir``.

    ``download`` (``runtime.download``) is accepted for the uniform fetch signature; a
    ``local_path`` never touches the network.

    Raises:
        ConfigError: when ``local_path`` is not set (ImageNet needs a login).
    """
    arc = cfg.archives.get(ARCHIVE_KEY)
    if arc is None:
        raise ConfigError(f"datasets.in100.archives needs the key {ARCHIVE_KEY!r}")
    if not arc.local_path:
        raise ConfigError(
            "ImageNet is never downloaded automatically: ILSVRC2012_img_train.tar (~138 GB) "
            "requires an image-net.org account. Download it yourself (https://image-net.org/"
            "download-images.php) and set `" + PARAM_KEY + ".local_path` in params.yaml to its "
            "path; the download stage then verifies its md5 and links it into place.")
    local = ArchiveConfig(filename=arc.filename, urls=[], md5=arc.md5, sha1=arc.sha1,
                          size=arc.size, local_path=arc.local_path)
    fetch_archives({ARCHIVE_KEY: local}, Path(raw_dir),
                   cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None, progress=progress,
                   retries=download.retries, timeout_s=download.timeout_s,
                   backoff_s=download.backoff_s, param_prefix="datasets.in100.archives")


def prepare_in100(cfg: In100Config, raw_dir: Path, out_dir: Path, *, progress: bool) -> None:
    """Prepare stage for ImageNet-100 (see module docstring).

    Raises:
        FileNotFoundError: the archive is missing.
        ConfigError: ``datasets.in100.archives`` lacks ``imagenet_train``.
        DataError / ExtractError: wrong class list, missing or empty classes, an image that does
            not decode, wrong count.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if ARCHIVE_KEY not in cfg.archives:
        raise ConfigError(f"datasets.in100.archives needs the key {ARCHIVE_KEY!r}")
    archive = raw_dir / cfg.archives[ARCHIVE_KEY].filename
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: {PARAM_KEY} not found; run the download@in100 "
                                "stage first (`dvc repro download@in100`)")
    list_path = Path(cfg.class_list) if cfg.class_list else vendored_class_list()
    production = cfg.verify_counts or cfg.class_list is None
    wnids = read_class_list(list_path, expect_md5=CLASS_LIST_MD5 if production else None)

    work = out_dir.parent / f".{out_dir.name}.extract"
    extracted = extract_selected_inner_tars(archive, work / "train", wnids)
    empty = [w for w in wnids if extracted.get(w, 0) == 0]
    if empty:
        raise DataError(f"{archive}: class folder(s) {empty[:10]} are empty")
    ids = []
    with staged_dir(out_dir) as stage:
        for wnid in log_progress(wnids, total=len(wnids), desc="in100 classes",
                                 enabled=progress):
            (stage / "train" / wnid).mkdir(parents=True)
            files = sorted((work / "train" / wnid).iterdir())
            for f in files:
                if f.suffix != ".JPEG":
                    raise DataError(f"{archive}: {wnid}.tar member {f.name} is not a .JPEG")
            decode_images(files)  # every pixel: a truncated JPEG fails here, named
            for f in files:
                try:
                    os.link(f, stage / "train" / wnid / f.name)
                except OSError:
                    shutil.copyfile(f, stage / "train" / wnid / f.name)
                ids.append(f"{wnid}/{f.stem}")
        if cfg.verify_counts and len(ids) != EXPECTED_IMAGES:
            raise DataError(f"{archive}: {len(ids)} images in the {len(wnids)} classes, "
                            f"expected {EXPECTED_IMAGES}")
        write_bytes(stage / "imagenet100.txt", list_path.read_bytes())
        record = write_split(stage / "splits" / "train.txt", ids)
        meta = build_meta(
            name="in100", num_classes=len(wnids), ignore_index=255, class_names=wnids,
            splits={"train": record},
            sources={ARCHIVE_KEY: {"filename": archive.name,
                                   "checksum": archive_checksum(archive)},
                     "class_list": {"filename": list_path.name,
                                    "md5": hashlib.md5(list_path.read_bytes()).hexdigest()}},
            converter_version=CONVERTER_VERSION,
            params={"verify_counts": cfg.verify_counts, "class_list": cfg.class_list})
        write_meta(stage / "meta.json", meta)
    shutil.rmtree(work, ignore_errors=True)
