"""Tests for neco.download.fetch against a local HTTP server (datasets.md §8, §10)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import socket
import time
import urllib.error
from pathlib import Path

import pytest
import yaml

from neco.config import DownloadConfig
from neco.download.archives import ArchiveConfig
from neco.download.fetch import (
    DownloadError,
    default_download_cache,
    fetch,
    fetch_archives,
    marker_path,
    part_path,
)
from neco.download.transfer import FatalError, TransientError, classify_error
from tests.fixtures.http_server import LocalServer, http_server_fixture  # noqa: F401

BODY = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 B: several read chunks
MD5 = hashlib.md5(BODY).hexdigest()
SHA1 = hashlib.sha1(BODY).hexdigest()
NET = dict(retries=0, timeout_s=5.0, backoff_s=0.0, progress=False)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Partial downloads go to ``$XDG_CACHE_HOME/neco/downloads``: a per-test folder here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "neco" / "downloads"


def _part(name: str, md5: str = MD5) -> Path:
    """The partial download of ``name`` (expected ``md5``) in the default download cache."""
    return part_path(default_download_cache(), name, {"md5": md5}, [], None)


def _runtime_lines(retries: int = 0) -> list[str]:
    """The ``runtime`` block of a hand-written params file for the download stage."""
    return ["runtime:", "  num_workers: 0", "  progress: false", "  download:",
            f"    retries: {retries}", "    timeout_s: 5.0", "    backoff_s: 0.0"]


def test_success_writes_verified_file_and_marker(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    dest = fetch([url], tmp_path / "a.bin", md5=MD5, sha1=SHA1, size=len(BODY), **NET)
    assert dest.read_bytes() == BODY
    assert not _part("a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    assert f'"md5": "{MD5}"' in marker_path(dest).read_text()


def test_rerun_is_noop(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    fetch([url], tmp_path / "a.bin", md5=MD5, **NET)
    http_server.routes.clear()  # the server would now answer 404
    fetch([url], tmp_path / "a.bin", md5=MD5, **NET)
    assert len(http_server.hits("/a.bin")) == 1


def test_existing_file_without_marker_is_verified_not_downloaded(
        http_server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(BODY)
    fetch([http_server.url("/a.bin")], tmp_path / "a.bin", md5=MD5, **NET)
    assert http_server.hits("/a.bin") == []
    assert marker_path(tmp_path / "a.bin").exists()


def test_interrupted_download_resumes_with_range(http_server: LocalServer, tmp_path: Path) -> None:
    cut = 300_000
    url = http_server.add("/a.bin", BODY, truncate_at=cut)
    with pytest.raises(DownloadError, match="truncated") as err:
        fetch([url], tmp_path / "a.bin", md5=MD5, size=len(BODY), **NET)
    part = _part("a.bin")
    assert part.stat().st_size == cut
    assert f"partial download ({cut} bytes) is kept in {part}" in str(err.value)
    http_server.routes["/a.bin"].truncate_at = None
    dest = fetch([url], tmp_path / "a.bin", md5=MD5, size=len(BODY), **NET)
    assert dest.read_bytes() == BODY
    assert http_server.hits("/a.bin")[-1]["Range"] == f"bytes={cut}-"
    assert not part.exists()


def test_resume_falls_back_to_full_restart_on_200(http_server: LocalServer,
                                                  tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY, support_range=False)
    _part("a.bin").parent.mkdir(parents=True)
    _part("a.bin").write_bytes(b"garbage-prefix")
    dest = fetch([url], tmp_path / "a.bin", md5=MD5, **NET)
    assert dest.read_bytes() == BODY
    assert http_server.hits("/a.bin")[0]["Range"] == "bytes=14-"


def test_retry_within_one_call_resumes(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY, truncate_at=1000, truncate_times=1)
    dest = fetch([url], tmp_path / "a.bin", md5=MD5, **{**NET, "retries": 1})
    assert dest.read_bytes() == BODY
    assert [h.get("Range") for h in http_server.hits("/a.bin")] == [None, "bytes=1000-"]


def test_md5_mismatch_removes_partial_and_names_hashes(http_server: LocalServer,
                                                       tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    wrong = "0" * 32
    with pytest.raises(DownloadError) as err:
        fetch([url], tmp_path / "a.bin", md5=wrong, **NET)
    assert wrong in str(err.value) and MD5 in str(err.value)
    assert not _part("a.bin", wrong).exists()
    assert not (tmp_path / "a.bin").exists()


def test_size_mismatch_fails_before_download(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    with pytest.raises(DownloadError, match=f"expected {len(BODY) + 1}"):
        fetch([url], tmp_path / "a.bin", size=len(BODY) + 1, **NET)
    assert not (tmp_path / "a.bin").exists()


def test_404_fails_fast_without_retry(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.url("/missing.bin")
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch([url], tmp_path / "m.bin", md5=MD5, **{**NET, "retries": 3, "backoff_s": 5.0})
    assert time.monotonic() - t0 < 3.0  # no backoff sleeps
    assert len(http_server.hits("/missing.bin")) == 1


def test_5xx_is_retried_with_backoff(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY, fail_times=2)
    dest = fetch([url], tmp_path / "a.bin", md5=MD5, **{**NET, "retries": 2, "backoff_s": 0.01})
    assert dest.read_bytes() == BODY
    assert len(http_server.hits("/a.bin")) == 3


def test_truncated_body_is_an_error(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY, truncate_at=10)
    with pytest.raises(DownloadError, match="truncated body"):
        fetch([url], tmp_path / "a.bin", **NET)
    assert not (tmp_path / "a.bin").exists()


def test_301_redirect_is_followed(http_server: LocalServer, tmp_path: Path) -> None:
    real = http_server.add("/real.bin", BODY)
    url = http_server.add("/old.bin", b"", redirect_to=real)
    assert fetch([url], tmp_path / "a.bin", md5=MD5, **NET).read_bytes() == BODY


def test_mirror_fallback(http_server: LocalServer, tmp_path: Path) -> None:
    good = http_server.add("/good.bin", BODY)
    dest = fetch([http_server.url("/gone.bin"), good], tmp_path / "a.bin", md5=MD5, **NET)
    assert dest.read_bytes() == BODY
    assert len(http_server.hits("/gone.bin")) == 1


@pytest.mark.parametrize("ctype,body", [
    ("text/html; charset=utf-8", b"<p>please log in</p>"),
    ("application/octet-stream", b"<!DOCTYPE html><html>quota exceeded</html>"),
])
def test_html_error_page_is_rejected(http_server: LocalServer, tmp_path: Path, ctype: str,
                                     body: bytes) -> None:
    url = http_server.add("/a.bin", body, content_type=ctype)
    with pytest.raises(DownloadError, match="HTML"):
        fetch([url], tmp_path / "a.bin", **NET)
    assert not (tmp_path / "a.bin").exists()
    assert not list(default_download_cache().glob("*.part"))


def test_html_page_far_below_expected_size_is_rejected(http_server: LocalServer,
                                                       tmp_path: Path) -> None:
    url = http_server.add("/a.bin", b"<html>error</html>", content_type="text/plain")
    with pytest.raises(DownloadError, match=f"expected {len(BODY)}"):
        fetch([url], tmp_path / "a.bin", size=len(BODY), **NET)


def test_local_path_skips_download_but_not_verification(tmp_path: Path) -> None:
    src = tmp_path / "mine.bin"
    src.write_bytes(BODY)
    dest = fetch(["http://127.0.0.1:9/never"], tmp_path / "out" / "a.bin", md5=MD5,
                 local_path=src, **NET)
    assert dest.read_bytes() == BODY
    with pytest.raises(DownloadError, match="md5 mismatch"):
        fetch([], tmp_path / "out2" / "a.bin", md5="f" * 32, local_path=src, **NET)
    with pytest.raises(DownloadError, match="does not exist"):
        fetch([], tmp_path / "out3" / "a.bin", md5=MD5, local_path=tmp_path / "nope", **NET)


def test_offline_failure_is_fast_and_names_urls_and_alternatives(tmp_path: Path) -> None:
    urls = ["http://images.cocodataset.invalid/zips/val2017.zip",
            "https://mirror.invalid/val2017.zip"]
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch(urls, tmp_path / "val2017.zip", md5=MD5, retries=3, timeout_s=10.0, backoff_s=5.0,
              progress=False, param_hint="datasets.coco.archives.val2017")
    assert time.monotonic() - t0 < 5.0
    msg = str(err.value)
    for needle in [*urls, "datasets.coco.archives.val2017.urls",
                   "datasets.coco.archives.val2017.local_path", "`datasets.coco.cache_dir`"]:
        assert needle in msg


def test_classification_of_errors() -> None:
    gai = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    assert isinstance(classify_error("http://x.org/a", gai), FatalError)
    refused = urllib.error.URLError(ConnectionRefusedError(111, "refused"))
    assert isinstance(classify_error("http://x.org/a", refused), FatalError)
    assert isinstance(classify_error("http://127.0.0.1:1/a", refused), TransientError)
    assert isinstance(classify_error("http://x.org/a", TimeoutError("timed out")), TransientError)
    missing = urllib.error.URLError(FileNotFoundError(2, "No such file"))
    assert isinstance(classify_error("file:///nope.zip", missing), FatalError)
    assert isinstance(classify_error("http://x.org/a", ConnectionResetError()), TransientError)
    for code, kind in [(403, FatalError), (404, FatalError), (429, TransientError),
                       (500, TransientError), (503, TransientError)]:
        http_err = urllib.error.HTTPError("http://x.org/a", code, "msg", {}, None)  # type: ignore
        assert isinstance(classify_error("http://x.org/a", http_err), kind)


def test_fetch_archives_with_cache_dir(http_server: LocalServer, tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    arcs = {"a": ArchiveConfig(filename="a.bin", urls=[url], md5=MD5, sha1=None, size=None,
                               local_path=None)}
    kw = dict(progress=False, retries=0, timeout_s=5.0, backoff_s=0.0)
    out = fetch_archives(arcs, tmp_path / "raw", cache_dir=tmp_path / "cache", **kw)
    assert out == {"a": tmp_path / "raw" / "a.bin"}
    assert out["a"].read_bytes() == BODY and (tmp_path / "cache" / "a.bin").exists()
    # A second checkout with the same cache never touches the network.
    out2 = fetch_archives(arcs, tmp_path / "raw2", cache_dir=tmp_path / "cache", **kw)
    assert out2["a"].read_bytes() == BODY
    assert len(http_server.hits("/a.bin")) == 1
    bad = {"a": ArchiveConfig(filename="../a.bin", urls=[url], md5=None, sha1=None, size=None,
                              local_path=None)}
    with pytest.raises(DownloadError, match="plain file name"):
        fetch_archives(bad, tmp_path / "raw3", cache_dir=None, **kw)


def test_download_stage_main_coco_and_offline_message(http_server: LocalServer,
                                                      tmp_path: Path) -> None:
    """stages/download.py end to end: params block -> CocoConfig -> fetch into --out."""
    from stages.download import main
    from tests.fixtures.coco_in100 import build_coco_archives

    arcs = build_coco_archives(tmp_path / "src")
    lines = [*_runtime_lines(), "datasets:", "  coco:", "    archives:"]
    for key, p in arcs.items():
        url = http_server.add(f"/{p.name}", p.read_bytes())
        lines += [f"      {key}:", f"        filename: {p.name}", f"        urls: [{url}]",
                  f"        md5: {hashlib.md5(p.read_bytes()).hexdigest()}", "        sha1: null",
                  f"        size: {p.stat().st_size}", "        local_path: null"]
    lines += ["    linear_subset: {fraction: 0.1, seed: 400}", "    convert_train: subset",
              "    regenerate_stuff_from_json: false", "    verify_counts: false",
              "    cache_dir: null"]
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(lines) + "\n")
    main(["--params", str(params), "--dataset", "coco", "--out", str(tmp_path / "raw")])
    for p in arcs.values():
        assert (tmp_path / "raw" / p.name).read_bytes() == p.read_bytes()
        assert marker_path(tmp_path / "raw" / p.name).is_file()
    # Offline-style failure: an unresolvable host fails fast and names the param keys.
    params.write_text(params.read_text().replace(http_server.url(""), "http://coco.invalid"))
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"datasets\.coco\.archives\.\w+\.local_path"):
        main(["--params", str(params), "--dataset", "coco", "--out", str(tmp_path / "raw2")])
    assert time.monotonic() - t0 < 5.0


def test_complete_partial_is_verified_without_request(http_server: LocalServer,
                                                      tmp_path: Path) -> None:
    url = http_server.add("/a.bin", BODY)
    _part("a.bin").parent.mkdir(parents=True)
    _part("a.bin").write_bytes(BODY)
    fetch([url], tmp_path / "a.bin", md5=MD5, size=len(BODY), **NET)
    assert http_server.hits("/a.bin") == []
    _part("b.bin").write_bytes(BODY[::-1])  # right size, wrong bytes: refetched
    fetch([url], tmp_path / "b.bin", md5=MD5, size=len(BODY), **NET)
    assert (tmp_path / "b.bin").read_bytes() == BODY


def test_progress_bar_is_tqdm_on_stderr_only_when_enabled(
        http_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = http_server.add("/a.bin", BODY)
    fetch([url], tmp_path / "quiet.bin", md5=MD5, **NET)
    assert capsys.readouterr().err == ""
    fetch([url], tmp_path / "loud.bin", md5=MD5, **{**NET, "progress": True})
    err = capsys.readouterr().err
    assert "loud.bin" in err and "B/s" in err  # tqdm's byte-rate bar, named after the file


def test_hash_file_matches_hashlib(tmp_path: Path) -> None:
    from neco.download.fetch import hash_file

    (tmp_path / "a.bin").write_bytes(BODY)
    assert hash_file(tmp_path / "a.bin", ["md5", "sha1", "sha256"]) == {
        "md5": MD5, "sha1": SHA1, "sha256": hashlib.sha256(BODY).hexdigest()}


def test_download_knobs_are_runtime_not_declared_dataset_params() -> None:
    """Retries/timeout/backoff cannot change a file: they live in ``runtime.download``, which no
    download or prepare stage declares, so changing them re-runs nothing."""
    from neco.data.registry import SOURCES

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, block in params["datasets"].items():
        assert "download" not in block, f"params.yaml: datasets.{name}.download"
    assert set(params["runtime"]["download"]) == {"retries", "timeout_s", "backoff_s"}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("download", "prepare"):
        declared = stages[stage]["do"]["params"]
        assert declared == ["datasets.${item}"], (stage, declared)
    for name, spec in SOURCES.items():
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        assert "download" not in fields, f"{spec.config}: a download field is declared"
        params_of_fetch = inspect.signature(spec.fetch_fn()).parameters
        assert list(params_of_fetch)[2:] == ["download", "progress"], name
        assert all(params_of_fetch[k].kind is inspect.Parameter.KEYWORD_ONLY
                   for k in ("download", "progress")), name


def test_download_stage_honours_runtime_download_retries(http_server: LocalServer,
                                                         tmp_path: Path) -> None:
    """A mirror that fails once (503): ``runtime.download.retries: 0`` fails, 1 succeeds."""
    from stages.download import main

    url = http_server.add("/ADEChallengeData2016.zip", BODY, fail_times=1)
    dataset = ["datasets:", "  ade20k:", "    archives:", "      ade20k:",
               "        filename: ADEChallengeData2016.zip", f"        urls: [{url}]",
               f"        md5: {MD5}", "        sha1: null", f"        size: {len(BODY)}",
               "        local_path: null", "    hbird_sets: null", "    verify_counts: false",
               "    cache_dir: null"]
    params = tmp_path / "params.yaml"
    argv = ["--params", str(params), "--dataset", "ade20k", "--out", str(tmp_path / "raw")]
    params.write_text("\n".join([*_runtime_lines(retries=0), *dataset]) + "\n")
    with pytest.raises(DownloadError, match="HTTP 503"):
        main(argv)
    assert len(http_server.hits("/ADEChallengeData2016.zip")) == 1
    assert not (tmp_path / "raw" / "ADEChallengeData2016.zip").exists()
    http_server.routes["/ADEChallengeData2016.zip"].fail_times = 1
    params.write_text("\n".join([*_runtime_lines(retries=1), *dataset]) + "\n")
    main(argv)
    assert (tmp_path / "raw" / "ADEChallengeData2016.zip").read_bytes() == BODY
    assert len(http_server.hits("/ADEChallengeData2016.zip")) == 3  # 1 + (503, then 200)


def test_download_config_is_the_runtime_schema() -> None:
    """``neco.download.fetch.DownloadConfig`` is the ``runtime.download`` schema (re-export)."""
    from neco.config.sections import RuntimeConfig
    from neco.download import fetch as fetch_module

    assert fetch_module.DownloadConfig is DownloadConfig
    assert {f.name: f.type for f in dataclasses.fields(RuntimeConfig)}["download"] in (
        DownloadConfig, "DownloadConfig")


# ------------------------------------------------- partial downloads outside the stage outputs


def _ade_params(tmp_path: Path, url: str, *, cache_dir: Path | None = None) -> Path:
    dataset = ["datasets:", "  ade20k:", "    archives:", "      ade20k:",
               "        filename: ADEChallengeData2016.zip", f"        urls: [{url}]",
               f"        md5: {MD5}", "        sha1: null", f"        size: {len(BODY)}",
               "        local_path: null", "    hbird_sets: null", "    verify_counts: false",
               f"    cache_dir: {cache_dir if cache_dir is not None else 'null'}"]
    params = tmp_path / "params.yaml"
    params.write_text("\n".join([*_runtime_lines(), *dataset]) + "\n")
    return params


@pytest.mark.parametrize("with_cache_dir", [False, True])
def test_resume_survives_dvc_deleting_the_failed_stage_output(
        http_server: LocalServer, tmp_path: Path, with_cache_dir: bool) -> None:
    """download@ade20k is cut after N bytes; DVC deletes data/raw/ade20k before the rerun; the
    rerun still resumes with ``Range: bytes=N-`` because the .part lives outside the output."""
    import shutil

    from stages.download import main

    cut = 300_000
    url = http_server.add("/ADEChallengeData2016.zip", BODY, truncate_at=cut, truncate_times=1)
    cache = tmp_path / "shared" if with_cache_dir else None
    params = _ade_params(tmp_path, url, cache_dir=cache)
    raw = tmp_path / "data" / "raw" / "ade20k"
    argv = ["--params", str(params), "--dataset", "ade20k", "--out", str(raw)]
    with pytest.raises(DownloadError, match="truncated body"):
        main(argv)
    part = part_path(cache or default_download_cache(), "ADEChallengeData2016.zip",
                     {"md5": MD5}, [], None)
    assert part.stat().st_size == cut
    assert not (raw / "ADEChallengeData2016.zip").exists()
    shutil.rmtree(raw)  # what `dvc repro` does to the outputs of a stage before running it
    main(argv)
    hits = http_server.hits("/ADEChallengeData2016.zip")
    assert [h.get("Range") for h in hits] == [None, f"bytes={cut}-"]
    assert (raw / "ADEChallengeData2016.zip").read_bytes() == BODY
    assert f'"md5": "{MD5}"' in marker_path(raw / "ADEChallengeData2016.zip").read_text()
    assert not part.exists()
    assert not list(raw.glob("*.part")), "no partial file inside the stage output"


def _record_transfers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Wrap ``transfer`` so that each call logs its start and end and takes >= 0.3 s."""
    import threading

    from neco.download import fetch as fetch_module

    events: list[tuple[str, float]] = []
    real, guard = fetch_module.transfer, threading.Lock()

    def slow_transfer(*args: object, **kwargs: object) -> None:
        with guard:
            events.append(("start", time.monotonic()))
        time.sleep(0.3)
        try:
            real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with guard:
                events.append(("end", time.monotonic()))

    monkeypatch.setattr(fetch_module, "transfer", slow_transfer)
    return events


def test_concurrent_fetches_of_one_file_serialise_on_the_lock(
        http_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads fetch the same URL to the same place: one downloads, the other waits on the
    lock and then finds the verified file; the transfers never overlap."""
    import threading

    events = _record_transfers(monkeypatch)
    url = http_server.add("/a.bin", BODY)
    results: dict[int, Path | BaseException] = {}

    def run(i: int) -> None:
        try:
            results[i] = fetch([url], tmp_path / "raw" / "a.bin", md5=MD5, size=len(BODY), **NET)
        except BaseException as err:  # noqa: BLE001 - reported below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {0: tmp_path / "raw" / "a.bin", 1: tmp_path / "raw" / "a.bin"}
    assert [e for e, _ in events] == ["start", "end"], "the second run must not transfer again"
    assert len(http_server.hits("/a.bin")) == 1
    assert hashlib.md5((tmp_path / "raw" / "a.bin").read_bytes()).hexdigest() == MD5


_CHILD = """
import sys, time
from pathlib import Path
from neco.download import fetch as F
go, log, url, dest, md5 = sys.argv[1:6]
real = F.transfer
def logged(*a, **k):
    with open(log, "a") as fh:
        fh.write(f"start {time.monotonic()}\\n")
    time.sleep(0.3)
    try:
        real(*a, **k)
    finally:
        with open(log, "a") as fh:
            fh.write(f"end {time.monotonic()}\\n")
F.transfer = logged
while not Path(go).exists():
    time.sleep(0.01)
F.fetch([url], Path(dest), md5=md5, retries=0, timeout_s=10.0, backoff_s=0.0, progress=False)
"""


def test_two_processes_sharing_the_download_cache_take_turns(
        http_server: LocalServer, tmp_path: Path) -> None:
    """Two processes (two checkouts, one default download cache) fetch the same file: the lock
    makes them take turns on the one ``.part`` (no interleaved appends), both files verify."""
    import os
    import subprocess
    import sys

    url = http_server.add("/a.bin", BODY)
    go, log = tmp_path / "go", tmp_path / "log.txt"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT)}
    dests = [tmp_path / f"checkout{i}" / "a.bin" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(go), str(log), url, str(d), MD5],
                              env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for d in dests]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for d in dests:
        assert hashlib.md5(d.read_bytes()).hexdigest() == MD5
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["start", "end", "start", "end"], events  # never two transfers at once
    assert [h.get("Range") for h in http_server.hits("/a.bin")] == [None, None]
    assert not list((tmp_path / "xdg" / "neco" / "downloads").glob("*.part"))


def test_default_download_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert default_download_cache() == tmp_path / "c" / "neco" / "downloads"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_download_cache() == tmp_path / "home" / ".cache" / "neco" / "downloads"
    key = part_path(tmp_path, "x.zip", {"md5": "ab", "sha1": "cd"}, ["u"], None)
    assert key == tmp_path / "x.zip.sha1-cd.part"
    assert part_path(tmp_path, "x.zip", {}, ["u"], 3) != part_path(tmp_path, "x.zip", {}, ["v"], 3)


def test_disk_full_while_downloading_is_one_error_and_keeps_the_partial(
        http_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while appending to the .part: a DiskFullError naming the .part, bytes kept."""
    import errno

    from neco.download import transfer as transfer_module
    from neco.io import DiskFullError

    url = http_server.add("/a.bin", BODY)
    real_open = open
    writes = {"n": 0}

    class FullFile:
        def __init__(self, fh: object) -> None:
            self.fh = fh

        def __enter__(self) -> FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()  # type: ignore[attr-defined]

        def write(self, data: bytes) -> int:
            writes["n"] += 1
            if writes["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)  # type: ignore[attr-defined,no-any-return]

    def fake_open(path: object, mode: str = "r", *a: object, **k: object) -> object:
        fh = real_open(path, mode, *a, **k)  # type: ignore[call-overload]
        return FullFile(fh) if mode == "ab" else fh

    monkeypatch.setattr(transfer_module, "open", fake_open, raising=False)
    with pytest.raises(DiskFullError, match=r"a\.bin\.md5-[0-9a-f]+\.part: no space left on "
                                            r"device .*bytes kept") as err:
        fetch([url], tmp_path / "a.bin", md5=MD5, **NET)
    assert "\n" not in str(err.value)
    assert _part("a.bin").stat().st_size > 0 and not (tmp_path / "a.bin").exists()
