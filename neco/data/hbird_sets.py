"""Hummingbird low-shot file sets (datasets.md §7; evaluation.md Hummingbird memory subsets).

The file sets of ``vpariza/open-hummingbird-eval`` at a pinned commit hold ids (no extension),
one per line, LF. They are fetched as small files, their raw md5 is verified against the table
below (production mode), and they are installed into a prepared tree as

* ``splits/hbird/1_div_<d>/<name>.txt``: canonical sorted copy, the list every consumer reads;
* ``splits/reference_order/hbird/1_div_<d>/<name>.txt``: the raw bytes, verbatim;
* ``splits/reference_order/{trainaug,val}.txt``: HB's raw ``voc/full/trainaug.txt`` and
  ``voc/val.txt`` (unsorted, the order the reference loaders iterate in).

Every low-shot subset must be a subset of the dataset's full training split, and the two
reference-order lists must hold exactly the canonical ``trainaug`` / ``val`` ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neco.config import ConfigError, DownloadConfig
from neco.data.errors import DataError
from neco.data.meta import SplitRecord, md5_bytes, parse_id_list, write_split
from neco.download.archives import ArchiveConfig
from neco.download.fetch import fetch_archives
from neco.io import write_bytes

HBIRD_REPO = "vpariza/open-hummingbird-eval"
HBIRD_COMMIT = "5e79da292730edded800a89828b84f38469f5476"

_SEEDS = (42, 400, 783, 1293, 4019)
_VOC_MD5 = {
    8: ("0ac19707a99371de6f8b1365bccd2fee", "7818b2d8a8b42b0f02b65da795410447",
        "237fddf7f3a934ef5e2b067e9d607498", "1b2168068db782051f772f2064203f03",
        "7fa8e939fd9b3287de554b0feec14962"),
    64: ("2b86b8fd1a83e4c4a0160b21efe8bb60", "a3a1607f3be82a530b49c37c244dc08d",
         "4a28111471125d69765371678499e14b", "5a0dd48c8aae11d4f3a964b5a5e15675",
         "6b60a85887f0aee1d4a992e00ee8beb3"),
    128: ("5893607813afc3b8868b8ee5d28bd479", "f1fca3dc40cd4fc9e9b4133edb095157",
          "6083ff097670b4156b9282ad72feaf84", "f777bab2738eadc186cdac524090ae40",
          "22617dbb37b4a75f5f0c4fb268f0e6d2"),
}  # fmt: skip
_ADE_MD5 = {
    8: ("0c78e7b899bb981029a0f80c857b24f1", "12d9bc5fe7e361173fed1228973e00cd",
        "3e69923b58289a1ad8497c40ebb335a5", "9aff7ad00ef80a7e6c487b17b1e8c6ab",
        "17d9d9ac546e5116cc2e844e6ca8dd54"),
    64: ("aabc1f6fd076f15bbcfb40dccd44f097", "f6f780519d72aa527f0d26f2a37020d3",
         "5d509b68d023f68bf95672a415eed050", "6950181934a537551e8c58f955e7d5e2",
         "96c5c8fdedf4d18b1d7e67fb3c7e43c9"),
    128: ("39a3bcec756eb344873eeadc55bc10dc", "001ffd49c109f9b5a0d313be0d522aba",
          "65d9c16d135c6316a766333b9487ef36", "dbcd388eee3aaf31230b395d7ad586ed",
          "5291ab67bd42950f180335282ed88dc6"),
}  # fmt: skip

# Base split each dataset's subsets are drawn from, and subset sizes per divisor (§7).
BASE_SPLIT = {"voc": "trainaug", "ade20k": "training"}
LOW_SHOT_SIZES = {
    "voc": {8: 1320, 64: 160, 128: 80},
    "ade20k": {8: 2550, 64: 300, 128: 150},
}
# Verbatim reference-order lists: HB path -> split name under splits/reference_order/.
REFERENCE_ORDER_FILES = {"voc/full/trainaug.txt": "trainaug", "voc/val.txt": "val"}


def _md5_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for dataset, md5s in (("voc", _VOC_MD5), ("ade20k", _ADE_MD5)):
        for div, digests in md5s.items():
            for seed, digest in zip(_SEEDS, digests, strict=True):
                table[f"{dataset}/1_div_{div}/{BASE_SPLIT[dataset]}_{div}_{seed}.txt"] = digest
    table["voc/full/trainaug.txt"] = "3b20577ce87eb9beafd81438ebc61d41"
    table["voc/val.txt"] = "5510db06bbb92848a0bf6109eba6d646"
    return table


# HB path under file_sets/ -> md5 of the raw bytes (datasets.md §7).
HBIRD_MD5: dict[str, str] = _md5_table()

_LOW_SHOT_RE = re.compile(r"^(voc|ade20k)/1_div_(\d+)/([a-z]+)_(\d+)_(\d+)\.txt$")


@dataclass(frozen=True)
class HbirdSetsConfig:
    """Which Hummingbird file sets to fetch (``datasets.<name>.hbird_sets`` in params).

    Attributes:
        base_url: URL of ``file_sets/`` at the pinned commit (files are ``<base_url>/<path>``).
        files: paths under ``file_sets/``, e.g. ``voc/1_div_8/trainaug_8_42.txt``. With
            ``verify_counts`` the list must be the full table of datasets.md §7 for the dataset.
    """

    base_url: str
    files: list[str]


def expected_files(dataset: str) -> list[str]:
    """All §7 file-set paths of ``dataset`` (``voc`` or ``ade20k``), sorted."""
    if dataset not in BASE_SPLIT:
        raise ValueError(f"no Hummingbird file sets for {dataset!r}; expected {sorted(BASE_SPLIT)}")
    return sorted(p for p in HBIRD_MD5 if p.startswith(f"{dataset}/"))


def check_file_list(files: Sequence[str], *, dataset: str, verify: bool) -> None:
    """Check configured file-set paths: right dataset, known shape, full table when verifying.

    Raises:
        ConfigError: naming ``datasets.<dataset>.hbird_sets.files`` and the offending path.
    """
    key = f"datasets.{dataset}.hbird_sets.files"
    for rel in files:
        if not rel.startswith(f"{dataset}/"):
            raise ConfigError(f"{key}: {rel!r} is not a {dataset} file set")
        if rel not in REFERENCE_ORDER_FILES and not _LOW_SHOT_RE.match(rel):
            raise ConfigError(
                f"{key}: {rel!r} is neither a low-shot set "
                f"'{dataset}/1_div_<d>/<split>_<d>_<seed>.txt' nor one of "
                f"{sorted(REFERENCE_ORDER_FILES)}"
            )
        if rel not in REFERENCE_ORDER_FILES:
            _low_shot_div(rel)
    if len(set(files)) != len(files):
        raise ConfigError(f"{key}: duplicate entries in {list(files)}")
    if verify and sorted(files) != expected_files(dataset):
        missing = sorted(set(expected_files(dataset)) - set(files))
        extra = sorted(set(files) - set(expected_files(dataset)))
        raise ConfigError(
            f"{key} must list every {dataset} file set of datasets.md §7 when "
            f"verify_counts is true; missing {missing}, unexpected {extra}"
        )


def hbird_archive_configs(
    cfg: HbirdSetsConfig, *, dataset: str, verify: bool
) -> dict[str, dict[str, ArchiveConfig]]:
    """Download entries for the file sets, grouped by their folder under ``file_sets/``.

    Returns:
        ``{folder: {path: ArchiveConfig}}``; each file is stored as ``<dest>/<folder>/<name>``.
        The md5 is the §7 value when ``verify`` and None otherwise (fixtures).
    """
    check_file_list(cfg.files, dataset=dataset, verify=verify)
    groups: dict[str, dict[str, ArchiveConfig]] = {}
    for rel in cfg.files:
        folder, _, name = rel.rpartition("/")
        groups.setdefault(folder, {})[rel] = ArchiveConfig(
            filename=name,
            urls=[f"{cfg.base_url.rstrip('/')}/{rel}"],
            md5=HBIRD_MD5[rel] if verify else None,
            sha1=None,
            size=None,
            local_path=None,
        )
    return groups


def fetch_hbird_sets(
    cfg: HbirdSetsConfig, dest: Path, *, dataset: str, verify: bool, download: DownloadConfig,
    progress: bool
) -> None:
    """Fetch the configured file sets to ``<dest>/<path>`` (verified md5 when ``verify``)."""
    for folder, group in sorted(hbird_archive_configs(cfg, dataset=dataset, verify=verify).items()):
        fetch_archives(
            group, dest / folder, cache_dir=None, progress=progress, retries=download.retries,
            timeout_s=download.timeout_s, backoff_s=download.backoff_s,
            param_prefix=f"datasets.{dataset}.hbird_sets",
        )


def install_hbird_sets(
    src_dir: Path,
    files: Sequence[str],
    *,
    dataset: str,
    splits_dir: Path,
    canonical: Mapping[str, set[str]],
    verify: bool,
) -> dict[str, SplitRecord]:
    """Verify and install file sets into ``splits_dir`` of a prepared tree.

    Args:
        src_dir: folder mirroring ``file_sets/`` (``<src_dir>/<path>`` for each path).
        files: paths under ``file_sets/`` to install.
        dataset: ``voc`` or ``ade20k``.
        splits_dir: the prepared tree's ``splits/`` folder.
        canonical: the prepared split ids by name (must contain the base split, and ``val``
            for VOC when reference-order files are installed).
        verify: check raw md5s (§7), subset sizes and that the file list is complete.

    Returns:
        split records keyed ``hbird/1_div_<d>/<name>``, ``reference_order/hbird/...`` and
        ``reference_order/<split>``, for ``meta.json``.

    Raises:
        FileNotFoundError: naming a file set that was not fetched.
        DataError: naming the file, on md5/size mismatch or ids outside the base split.
    """
    check_file_list(files, dataset=dataset, verify=verify)
    base = BASE_SPLIT[dataset]
    records: dict[str, SplitRecord] = {}
    for rel in sorted(files):
        path = src_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Hummingbird file set not found; run the "
                                    f"download@{dataset} stage (`dvc repro download@{dataset}`)")
        data = path.read_bytes()
        digest = md5_bytes(data)
        if verify and digest != HBIRD_MD5[rel]:
            raise DataError(f"{path}: md5 {digest} != expected {HBIRD_MD5[rel]} (datasets.md §7)")
        ids = parse_id_list(data, source=str(path))
        if rel in REFERENCE_ORDER_FILES:
            split = REFERENCE_ORDER_FILES[rel]
            _check_same(ids, canonical.get(split), source=path, split=split)
            write_bytes(splits_dir / "reference_order" / f"{split}.txt", data)
            records[f"reference_order/{split}"] = SplitRecord(count=len(ids), md5=digest)
            continue
        div = _low_shot_div(rel)
        if verify and len(ids) != LOW_SHOT_SIZES[dataset][div]:
            raise DataError(
                f"{path}: {len(ids)} ids, expected {LOW_SHOT_SIZES[dataset][div]} (datasets.md §7)"
            )
        outside = sorted(set(ids) - canonical[base])
        if outside:
            raise DataError(
                f"{path}: {len(outside)} id(s) not in the {base} split, e.g. {outside[:5]}"
            )
        stem = rel.removeprefix(f"{dataset}/").removesuffix(".txt")
        records[f"hbird/{stem}"] = write_split(splits_dir / "hbird" / f"{stem}.txt", ids)
        write_bytes(splits_dir / "reference_order" / "hbird" / f"{stem}.txt", data)
        records[f"reference_order/hbird/{stem}"] = SplitRecord(count=len(ids), md5=digest)
    return records


def _low_shot_div(rel: str) -> int:
    m = _LOW_SHOT_RE.match(rel)
    assert m is not None
    dataset, div, split, div2, _seed = m.groups()
    if split != BASE_SPLIT[dataset] or div != div2 or int(div) not in LOW_SHOT_SIZES[dataset]:
        raise ConfigError(
            f"datasets.{dataset}.hbird_sets.files: {rel!r}: expected "
            f"'{dataset}/1_div_<d>/{BASE_SPLIT[dataset]}_<d>_<seed>.txt' with d in "
            f"{sorted(LOW_SHOT_SIZES[dataset])}"
        )
    return int(div)


def _check_same(
    ids: Sequence[str], expected: set[str] | None, *, source: Path, split: str
) -> None:
    if expected is None or set(ids) != expected:
        n = 0 if expected is None else len(expected)
        raise DataError(
            f"{source}: reference-order list does not hold exactly the {n} ids of the "
            f"canonical '{split}' split ({len(ids)} ids)"
        )
