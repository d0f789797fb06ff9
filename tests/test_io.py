"""Tests for neco.io: file digests and the rank-zero check (plus staging's progress wrapper)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from lightning_utilities.core.rank_zero import rank_zero_only

from neco import io as nio
from neco.data.meta import md5_file
from neco.data.staging import log_progress

DATA = bytes(range(256)) * 5000 + b"end"  # > 1 MiB: several chunks


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_file_digest_matches_hashlib(tmp_path: Path, algorithm: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    want = hashlib.new(algorithm, DATA).hexdigest()
    assert nio.file_digest(path, algorithm) == want
    monkeypatch.delattr(hashlib, "file_digest")  # Python 3.10: chunked fallback
    assert nio.file_digest(str(path), algorithm) == want


def test_sha256_file_and_md5_file_are_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert nio.sha256_file(path) == hashlib.sha256(DATA).hexdigest()
    assert md5_file(path) == hashlib.md5(DATA).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert nio.file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_is_rank_zero_follows_lightning_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")  # the env is only a fallback once Lightning set a rank
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    assert nio.is_rank_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not nio.is_rank_zero()
    monkeypatch.delenv("RANK")
    assert not nio.is_rank_zero()


@pytest.mark.parametrize("env,expected", [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "1"}, True),  # RANK first, as lightning_fabric reads it
    ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),
    ({"SLURM_PROCID": "2"}, False),
])
def test_is_rank_zero_before_lightning_reads_env(monkeypatch: pytest.MonkeyPatch,
                                                 env: dict[str, str], expected: bool) -> None:
    monkeypatch.delattr(rank_zero_only, "rank", raising=False)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert nio.is_rank_zero() is expected


def test_write_is_skipped_off_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    nio.write_text(tmp_path / "a.txt", "x")
    assert not (tmp_path / "a.txt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    nio.write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_lightning_shares_the_rank_zero_state() -> None:
    pl_rank_zero = pytest.importorskip("pytorch_lightning.utilities.rank_zero")
    fabric_rank_zero = pytest.importorskip("lightning_fabric.utilities.rank_zero")
    assert pl_rank_zero.rank_zero_only is rank_zero_only
    assert fabric_rank_zero.rank_zero_only is rank_zero_only


@pytest.mark.parametrize("enabled", [False, True])
def test_log_progress_yields_everything(enabled: bool,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert list(log_progress(iter(range(7)), total=7, desc="things", enabled=enabled)) == list(
        range(7))
    err = capsys.readouterr().err
    assert ("things" in err and "7/7" in err) if enabled else err == ""


# ----------------------------------------------------------------------------- disk full


def _enospc(*_: object, **__: object) -> None:
    raise OSError(28, "No space left on device")


def test_atomic_write_on_full_disk_names_the_path(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out" / "metrics.json"
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    with pytest.raises(nio.DiskFullError) as err:
        nio.write_json(dest, {"a": 1})
    msg = str(err.value)
    assert msg.startswith(f"{dest}: no space left on device (") and "\n" not in msg
    assert err.value.errno == 28 and isinstance(err.value, OSError)
    assert list(dest.parent.iterdir()) == []  # neither dest nor the temporary file
    import pickle  # crosses process boundaries (loader workers) intact

    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is nio.DiskFullError and again.path == dest


def test_errnoless_writer_failure_is_disk_full_only_when_the_disk_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save on a full disk raises RuntimeError('... iostream error') without an errno."""
    iostream = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"
                            "\nbasic_ios::clear: iostream error")
    dest = tmp_path / "features.pt"

    def save(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise iostream

    with pytest.raises(RuntimeError, match="iostream error") as err:  # disk not full: unchanged
        with nio.atomic_path(dest) as tmp:
            save(tmp)
    assert err.value is iostream
    monkeypatch.setattr(nio, "free_bytes", lambda path: 4096)
    with pytest.raises(nio.DiskFullError, match=r"features\.pt: no space left on device \(0\.0 "
                                                r"MiB free; the writer said: \[enforce fail.* "
                                                r"iostream error\)") as full:
        with nio.atomic_path(dest) as tmp:
            save(tmp)
    assert "\n" not in str(full.value) and not list(tmp_path.iterdir())
    assert not nio.is_disk_full(ValueError("iostream error"), tmp_path)
    assert nio.is_disk_full(OSError("write failed: No space left on device"), tmp_path)
    assert not nio.is_disk_full(OSError(13, "Permission denied"), tmp_path)


def test_staged_dir_on_full_disk(tmp_path: Path) -> None:
    from neco.data.staging import staged_dir

    dest = tmp_path / "prepared"
    with pytest.raises(nio.DiskFullError, match=f"{dest}: no space left on device"):
        with staged_dir(dest) as tmp:
            (tmp / "a.txt").write_text("x")
            _enospc()
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_multi_line_messages_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from neco.cli import one_line, run_stage

    assert one_line("could not fetch a.zip. Tried:\n  u1: 404\n  u2: timeout\nAlternatives: x") \
        == "could not fetch a.zip. Tried: u1: 404; u2: timeout; Alternatives: x"

    def main() -> None:
        raise nio.DiskFullError(Path("/data/x"))

    with pytest.raises(SystemExit):
        run_stage(main)
    err = capsys.readouterr().err
    assert err.startswith("error: /data/x: no space left on device") and err.count("\n") == 1
