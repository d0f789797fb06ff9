"""The train stage under faults: signals, full disks, corrupt checkpoints, changed inputs.

* SIGTERM (``timeout``, SLURM preemption, ``docker stop``) stops the stage after the current
  step with exit 143, one ``interrupted`` line, a resumable ``last.ckpt`` and no output that
  looks complete; the rerun resumes and ends bit-identical to an uninterrupted run. SIGKILL
  (no handler runs) leaves the last atomic checkpoint, and the rerun is just as exact.
* Checkpoints are written atomically (a failing write leaves the previous file and no partial
  one) and verified before a resume (an unreadable ``last.ckpt`` is moved aside, with one
  warning, and the run starts from scratch).
* A checkpoint is resumed only for the same init weights, crop manifest and training images.

Uses the tiny fixtures of ``tests/fixtures/tiny_training.py`` (12 images, batch 4, 2 epochs of 3
steps, checkpoint after each epoch).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import neco.train.datamodule as datamodule
from neco.config import RuntimeConfig, load_section, load_value
from neco.data.registry import get_dataset, open_images
from neco.models.recipes import load_training
from neco.train import resume as resume_mod
from neco.train.resume import atomic_torch_save, checkpoint_problem, input_digests
from neco.train.run import run_training
from tests.fixtures.tiny_training import TinySetup, build_tiny, git_repo

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),  # Lightning vs torch
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
#: the train stage with every image of epoch >= 1 slowed down (results unchanged), so that a
#: signal sent once the epoch-0 checkpoint exists lands in the middle of epoch 1
SLOW_STAGE = """
import time
import neco.train.datamodule as dm
_getitem = dm.MultiCropDataset.__getitem__
def _slow(self, index):
    if self.epoch >= 1:
        time.sleep(0.3)
    return _getitem(self, index)
dm.MultiCropDataset.__getitem__ = _slow
from neco.cli import run_stage
from stages.train import main
run_stage(main)
"""


class Tiny:
    """The tiny setup, its git working directory and the weights stage's init file."""

    def __init__(self, setup: TinySetup, work: Path, init: Path) -> None:
        self.setup, self.work, self.init = setup, work, init
        self.root = setup.root

    def dirs(self, tag: str) -> dict[str, Path]:
        base = self.root / tag
        return {k: base / k for k in ("out", "ckpt", "live")} | {"timings": base / "timings.json"}

    def run(self, tag: str, *, images: Any = None, init: Path | None = None) -> dict[str, Any]:
        """``run_training`` in this process, as the stage calls it."""
        p, d = self.setup.params, self.dirs(tag)
        return run_training(
            seed=load_value(p, "seed", int),
            train=load_training(p)[0],
            crops=load_training(p)[1],
            images=images if images is not None else self.setup.images(),
            manifest_path=self.setup.manifest,
            out_dir=d["out"],
            checkpoint_dir=d["ckpt"],
            live_dir=d["live"],
            runtime=load_section(p, "runtime", RuntimeConfig),
            init_weights=init or self.init,
            timings_path=d["timings"],
        )

    def stage_args(self, tag: str) -> list[str]:
        d = self.dirs(tag)
        return [
            "--params", str(self.setup.params), "--dataset", "synthetic",
            "--data", str(self.setup.prepared), "--manifest", str(self.setup.manifest),
            "--init", str(self.init), "--out", str(d["out"]), "--checkpoints", str(d["ckpt"]),
            "--live", str(d["live"]), "--timings", str(d["timings"]),
        ]

    def stage(self, tag: str) -> None:
        """The stage's ``main`` in this process (a rerun; saves a subprocess's imports)."""
        from stages.train import main

        main(self.stage_args(tag))

    def popen(self, tag: str) -> subprocess.Popen[str]:
        """The stage in a subprocess, every image of epoch >= 1 slowed down."""
        head = [sys.executable, "-c", SLOW_STAGE]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.Popen(
            head + self.stage_args(tag), cwd=self.work, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    root = tmp_path_factory.mktemp("tiny_faults")
    setup = build_tiny(root)
    work = git_repo(root / "repo")  # dvclive wants a git repository as working directory
    from stages.weights import main as weights_main

    weights_main(["--params", str(setup.params), "--out", str(root / "init")])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        yield Tiny(setup, work, root / "init" / "init_backbone.safetensors")


@pytest.fixture(scope="module")
def reference(tiny: Tiny) -> dict[str, Any]:
    """The uninterrupted run (in this process, one thread like the stage subprocesses)."""
    summary = tiny.run("ref")
    assert summary["resumed"] is False and summary["steps"] == STEPS
    return summary


def student(tiny: Tiny, tag: str) -> dict[str, torch.Tensor]:
    return load_file(str(tiny.dirs(tag)["out"] / "student_backbone.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def loss_rows(tiny: Tiny, tag: str) -> str:
    return (tiny.dirs(tag)["live"] / "plots" / "metrics" / "train" / "loss.tsv").read_text()


def wait_for(
    path: Path, proc: subprocess.Popen[str], *, lines: int = 0, timeout: float = 120.0
) -> None:
    """Poll until ``path`` exists with at least ``lines`` lines (the process must still run)."""
    deadline = time.monotonic() + timeout
    while not path.is_file() or (lines and len(path.read_text().splitlines()) < lines):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"stage ended (rc {proc.returncode}) before {path} existed:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def complete_outputs(tiny: Tiny, tag: str) -> list[str]:
    d = tiny.dirs(tag)
    names = [d["out"] / "student_backbone.safetensors", d["out"] / "resolved_config.json",
             d["live"] / "summary.json", d["timings"]]
    return [p.name for p in names if p.exists()]


def crash_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the data loading of ``epoch`` fail, as a crashed job would."""
    original = datamodule.MultiCropDataset.__getitem__

    def getitem(self: datamodule.MultiCropDataset, index: int) -> Any:
        if self.epoch == epoch:
            raise RuntimeError("simulated crash")
        return original(self, index)

    monkeypatch.setattr(datamodule.MultiCropDataset, "__getitem__", getitem)


def crashed_run(tiny: Tiny, tag: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Path:
    """A run that dies at the start of epoch 1; returns its last.ckpt (the epoch-0 state)."""
    with monkeypatch.context() as mp:
        crash_in_epoch(mp, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            tiny.run(tag, **kwargs)
    last = tiny.dirs(tag)["ckpt"] / "last.ckpt"
    assert last.is_file()
    return last


# ---- 1. signals ------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_a_resumable_checkpoint_and_no_complete_output(
    tiny: Tiny, reference: dict[str, Any], signum: signal.Signals
) -> None:
    """SIGTERM (timeout, preemption, docker stop) or a Ctrl+C: the step in flight finishes, the
    stage exits 128 + signal with one line, last.ckpt holds the epoch-0 state, nothing looks
    complete (stale outputs of an earlier attempt included); the rerun resumes exactly."""
    tag = f"signal_{signum.name}"
    d = tiny.dirs(tag)
    # outputs of an earlier attempt that must not survive into an unfinished run
    d["out"].mkdir(parents=True)
    d["live"].mkdir(parents=True)
    for stale in (d["out"] / "student_backbone.safetensors", d["out"] / "resolved_config.json",
                  d["live"] / "summary.json", d["timings"]):
        stale.write_text("stale")

    proc = tiny.popen(tag)
    loss = d["live"] / "plots" / "metrics" / "train" / "loss.tsv"
    wait_for(d["ckpt"] / "last.ckpt", proc)  # the epoch-0 checkpoint (step 3)
    wait_for(loss, proc, lines=1 + 4)  # step 4 is done, step 5 (of 6) is loading its images
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]  # 143 for SIGTERM, 130 for SIGINT
    lines = [ln for ln in err.splitlines() if ln.startswith("[train]")]
    assert len(lines) == 1 and f"interrupted by {signum.name}" in lines[0], err[-3000:]
    assert "last.ckpt" in lines[0] and "step 3" in lines[0] and "rerun" in lines[0]
    assert complete_outputs(tiny, tag) == []
    last = torch.load(d["ckpt"] / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3 and checkpoint_problem(d["ckpt"] / "last.ckpt")[0] is None
    # a step in flight when the signal lands (step 5, usually) is finished and logged; a signal
    # between steps stops before the next one. The resumed run redoes steps 4-6 either way.
    assert len(loss_rows(tiny, tag).splitlines()) in (1 + 4, 1 + 5)

    tiny.stage(tag)  # the rerun: the same command
    assert '"resumed": true' in d["timings"].read_text()
    assert_same_weights(student(tiny, tag), student(tiny, "ref"))
    assert loss_rows(tiny, tag) == loss_rows(tiny, "ref")  # no step logged twice
    assert sorted(p.name for p in d["ckpt"].iterdir()) == ["final.ckpt", "last.fingerprint"]


@pytest.mark.slow
def test_sigkill_leaves_the_last_atomic_checkpoint(tiny: Tiny, reference: dict[str, Any]) -> None:
    d = tiny.dirs("sigkill")
    proc = tiny.popen("sigkill")
    wait_for(d["ckpt"] / "last.ckpt", proc)
    # a step of epoch 1 is logged, which the resumed run logs again
    wait_for(d["live"] / "plots" / "metrics" / "train" / "loss.tsv", proc, lines=1 + 4)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert complete_outputs(tiny, "sigkill") == []
    assert checkpoint_problem(d["ckpt"] / "last.ckpt")[0] is None

    tiny.stage("sigkill")
    assert '"resumed": true' in d["timings"].read_text()
    assert_same_weights(student(tiny, "sigkill"), student(tiny, "ref"))
    assert loss_rows(tiny, "sigkill") == loss_rows(tiny, "ref")


# ---- 2. atomic writes and verified resumes -------------------------------------------------
def failing_save(after_bytes: int = 1000) -> Any:
    """A ``torch.save`` that writes part of the file, then fails as a full disk does."""
    real = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:after_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_atomic_save_leaves_no_partial_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, dest)
    before = dest.read_bytes()
    with monkeypatch.context() as mp:
        mp.setattr(torch, "save", failing_save())
        with pytest.raises(OSError) as info:
            atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, dest)
    assert info.value.errno == errno.ENOSPC
    assert dest.read_bytes() == before  # the previous checkpoint, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file
    assert torch.load(dest, weights_only=False)["step"] == 1
    with monkeypatch.context() as mp:  # a fresh destination is not created at all
        mp.setattr(torch, "save", failing_save())
        with pytest.raises(OSError):
            atomic_torch_save({"step": 3}, tmp_path / "new.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_resumable(
    tiny: Tiny, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing the epoch-1 last.ckpt: the run fails, the epoch-0 one survives
    intact, and the rerun resumes from it exactly."""
    real, calls = torch.save, []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: end of epoch 1
            failing_save()(obj, f, *args, **kwargs)
        real(obj, f, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(torch, "save", save)
        with pytest.raises(OSError) as info:
            tiny.run("enospc")
    assert info.value.errno == errno.ENOSPC
    ckpt = tiny.dirs("enospc")["ckpt"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "last.fingerprint"]
    problem, meta = checkpoint_problem(ckpt / "last.ckpt")
    assert problem is None and meta["global_step"] == 3
    assert complete_outputs(tiny, "enospc") == []
    summary = tiny.run("enospc")
    assert summary["resumed"] is True and summary["steps"] == STEPS
    assert_same_weights(student(tiny, "enospc"), student(tiny, "ref"))


def truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "not a complete zip archive"


def flip_a_byte(path: Path) -> str:
    """Flip one byte inside the largest stored tensor (the zip structure stays intact)."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 200 + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "CRC-32"


@pytest.mark.parametrize("damage", [truncate, flip_a_byte], ids=["truncated", "flipped_byte"])
def test_unreadable_last_ckpt_is_moved_aside_and_the_run_completes(
    tiny: Tiny, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, damage: Any,
) -> None:
    tag = f"corrupt_{damage.__name__}"
    last = crashed_run(tiny, tag, monkeypatch)
    why = damage(last)
    with caplog.at_level(logging.WARNING, logger=resume_mod.__name__):
        summary = tiny.run(tag)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == resume_mod.__name__]
    assert len(warnings) == 1, warnings
    assert str(last) in warnings[0] and why in warnings[0] and "from scratch" in warnings[0]
    assert summary["resumed"] is False and summary["steps"] == STEPS
    assert_same_weights(student(tiny, tag), student(tiny, "ref"))  # from scratch = reference
    ckpt = tiny.dirs(tag)["ckpt"]
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "final.ckpt", "last.ckpt.corrupt", "last.fingerprint"
    ]


# ---- 3. the resume key covers the inputs' content ----------------------------------------
def test_input_digests_cover_each_input(tiny: Tiny, tmp_path: Path) -> None:
    images = tiny.setup.images()
    base = input_digests(init_weights=tiny.init, manifest=tiny.setup.manifest, images=images)
    copies = {name: tmp_path / name for name in ("init.safetensors", "manifest.parquet")}
    shutil.copy(tiny.init, copies["init.safetensors"])
    shutil.copy(tiny.setup.manifest, copies["manifest.parquet"])
    same = input_digests(init_weights=copies["init.safetensors"],
                         manifest=copies["manifest.parquet"], images=images)
    assert same == base  # content, not paths
    for name, path in copies.items():
        path.write_bytes(path.read_bytes() + b"\0")
        other = input_digests(init_weights=copies["init.safetensors"],
                              manifest=copies["manifest.parquet"], images=images)
        key = "init_weights" if name.startswith("init") else "manifest"
        assert other[key] != base[key] and other["images"] == base["images"]
        shutil.copy(tiny.init if key == "init_weights" else tiny.setup.manifest, path)


def edit_one_image(prepared: Path) -> None:
    """Change the pixels of one training image, keeping its size (the manifest stays valid)."""
    images = open_images("synthetic", prepared, get_dataset("synthetic").unlabelled_split)
    path = images.path(5)
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.paste((255, 0, 0), (0, 0, 8, 8))
    rgb.save(path, quality=95)


def perturb_init(path: Path) -> None:
    weights = load_file(str(path))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(path))


@pytest.mark.parametrize("change", ["image", "init_weights"])
def test_changed_inputs_do_not_resume(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: str
) -> None:
    """Between the crash and the rerun one training image (or the init weights file) changes:
    the checkpoint was trained from other data, so the rerun starts from scratch."""
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny.setup.prepared, prepared)
    init = tmp_path / "init.safetensors"
    shutil.copy(tiny.init, init)

    def images() -> Any:
        return open_images("synthetic", prepared, get_dataset("synthetic").unlabelled_split)

    tag = f"changed_{change}"
    crashed_run(tiny, tag, monkeypatch, images=images(), init=init)
    if change == "image":
        edit_one_image(prepared)
    else:
        perturb_init(init)
    summary = tiny.run(tag, images=images(), init=init)
    assert summary["resumed"] is False and summary["steps"] == STEPS
    assert not (tiny.dirs(tag)["ckpt"] / "last.ckpt").exists()


def test_live_directory_is_trimmed_to_the_resumed_step(tmp_path: Path) -> None:
    """Rows of the interrupted epoch go (the resumed run logs them again), a row cut short by a
    kill goes, and an unreadable dvclive metrics.json is removed; the rest is untouched."""
    plots = tmp_path / "plots" / "metrics" / "train"
    plots.mkdir(parents=True)
    (plots / "loss.tsv").write_text("step\tloss\n1\t3.0\n2\t2.9\n3\t2.8\n4\t2.7\n5\t2.")
    (plots / "epoch_loss.tsv").write_text("step\tepoch_loss\n3\t2.9\n")
    (tmp_path / "metrics.json").write_text('{"train": {"loss": 2.')
    resume_mod.prepare_live_resume(tmp_path, 3)
    assert (plots / "loss.tsv").read_text() == "step\tloss\n1\t3.0\n2\t2.9\n3\t2.8\n"
    assert (plots / "epoch_loss.tsv").read_text() == "step\tepoch_loss\n3\t2.9\n"
    assert not (tmp_path / "metrics.json").exists()
    (tmp_path / "metrics.json").write_text('{"step": 5}')
    resume_mod.prepare_live_resume(tmp_path, 3)
    assert (tmp_path / "metrics.json").read_text() == '{"step": 5}'


def test_a_signal_before_training_starts_stops_at_once(tmp_path: Path) -> None:
    """While the inputs are hashed and the Trainer is built (before Lightning's own handler),
    SIGTERM/SIGINT raise TrainingInterrupted at once; restore() hands the signals back."""
    from neco.train.run import TrainingInterrupted, _EarlySignals

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    for signum in (signal.SIGTERM, signal.SIGINT):
        early = _EarlySignals(tmp_path)
        early.install()
        with pytest.raises(TrainingInterrupted) as info:
            signal.raise_signal(signum)
            time.sleep(1)  # the handler runs between bytecodes
        assert info.value.exit_code == 128 + signum and "before it started" in str(info.value)
        early.restore()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
