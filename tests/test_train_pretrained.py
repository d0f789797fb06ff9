"""Issue acceptance: the train stage with an official pretrained backbone (``dinov2_vitb14``).

* offline, official weights (``train.weights: null``): the stage fails within 5 s, naming the
  official URL and the ``train.weights`` override;
* a local file in the official DINOv2 hub format: the stage loads it strictly and trains on the
  tiny demo data (42-px globals, 28-px locals: 3x3 and 2x2 tokens at patch 14);
* ``python -m neco.models.export --ckpt final.ckpt`` gives the features of the exported student.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from official_formats import official_vit_state_dict
from safetensors.torch import load_file

from neco.models.checkpoints import read_export_metadata
from neco.models.export import load_exported
from neco.models.fetch import host_resolves
from neco.models.vit import FrozenExtractor
from stages import train as train_stage
from stages import weights as weights_stage
from tests.fixtures.tiny_training import TinySetup, build_tiny, git_repo

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),  # Lightning vs torch
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

REPO = Path(__file__).resolve().parents[1]
URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
VITB = {
    "datasets.synthetic.generator.num_train": 8,  # 8 images / batch 4 = 2 steps, 1 epoch
    "train.backbone": "dinov2_vitb14",
    "train.epochs": 1,
    "train.lr_backbone": 5.0e-6,
    # no periodic checkpoint: only final.ckpt (1.4 GB)
    "runtime.train.checkpoint_every_n_epochs": 2,
    "crops.global_size": 42,
    "crops.local_size": 28,
}
# In a subprocess: make every host lookup fail, then run the stage as `python -m stages.weights`
# (the weights stage resolves and downloads official weights; train only reads its output).
OFFLINE_BOOTSTRAP = (
    "import runpy, socket, sys\n"
    "def _offline(*args, **kwargs):\n"
    "    raise socket.gaierror(-2, 'Name or service not known (test: offline)')\n"
    "socket.getaddrinfo = _offline\n"
    "sys.argv[0] = 'stages.weights'\n"
    "runpy.run_module('stages.weights', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def vitb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinySetup]:
    root = tmp_path_factory.mktemp("tiny_vitb")
    with pytest.MonkeyPatch.context() as mp:  # dvclive wants a git repository as working dir
        mp.chdir(git_repo(root / "repo"))
        yield build_tiny(root, VITB)


def stage_args(setup: TinySetup, params: Path, tag: str) -> list[str]:
    run = setup.root / tag
    return [
        "--params", str(params), "--dataset", "synthetic", "--data", str(setup.prepared),
        "--manifest", str(setup.manifest),
        "--init", str(run / "init" / "init_backbone.safetensors"),
        "--out", str(run / "out"),
        "--checkpoints", str(run / "ckpt"), "--live", str(run / "live"),
    ]


def test_offline_official_weights_fail_fast(vitb: TinySetup, tmp_path: Path) -> None:
    cache = tmp_path / "weights_cache"
    params = vitb.with_params("offline", {"train.weights": None, "train.weights_cache": str(cache)})
    args = ["--params", str(params), "--out", str(vitb.root / "offline" / "init")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("NECO_TRACEBACK", None)
    if host_resolves("dl.fbaipublicfiles.com", 3.0):  # online machine: simulate the offline one
        cmd = [sys.executable, "-c", OFFLINE_BOOTSTRAP, *args]
    else:
        cmd = [sys.executable, "-m", "stages.weights", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr
    assert "Traceback" not in err, err[-2000:]
    assert err.startswith("error: backbone 'dinov2_vitb14'"), err[-2000:]
    assert URL in err
    assert "train.weights=<local path to dinov2_vitb14_pretrain.pth>" in err
    assert str(cache / "dinov2_vitb14_pretrain.pth") in err
    assert not (vitb.root / "offline").exists()  # failed before writing anything
    assert elapsed < 5.0, f"offline failure took {elapsed:.1f} s (limit 5 s)"


@pytest.fixture(scope="module")
def official_file(vitb: TinySetup) -> tuple[Path, dict[str, torch.Tensor]]:
    """``dinov2_vitb14_pretrain.pth`` contents with random values (official key names)."""
    sd = official_vit_state_dict(dim=768, depth=12, patch=14, grid=37, registers=0,
                                 layerscale=True, mask_token=True, seed=3)
    path = vitb.root / "dinov2_vitb14_pretrain.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def trained(
    vitb: TinySetup, official_file: tuple[Path, dict[str, torch.Tensor]]
) -> Iterator[Path]:
    """The stage run with ``train.weights`` = the official-format file (as ``__main__`` runs it).

    Removed afterwards: the ViT-B checkpoint alone is 1.4 GB (pytest keeps 3 temp roots).
    """
    params = vitb.with_params("local", {"train.weights": str(official_file[0])})
    args = stage_args(vitb, params, "local")
    weights_stage.main(["--params", str(params), "--out", str(vitb.root / "local" / "init")])
    train_stage.main(args)
    yield vitb.root / "local"
    shutil.rmtree(vitb.root / "local")
    official_file[0].unlink()


def test_local_official_weights_train(
    trained: Path, official_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    summary = json.loads((trained / "live" / "summary.json").read_text())
    assert summary["backbone"] == "dinov2_vitb14" and summary["steps"] == 2
    assert "resumed" not in summary and summary["epochs"] == 1  # run facts: reports/timings
    assert 0 < summary["final_loss"] < 100 and 0 < summary["initial_loss"] < 100
    # the starting point is the official file, loaded strictly through the DINOv2 key map
    _, official = official_file
    init = load_file(str(trained / "init" / "init_backbone.safetensors"))
    shared = sorted(set(init) & set(official))
    assert set(official) - set(init) == {"mask_token"}  # the only dropped key (method.md §4)
    assert len(shared) == len(init)
    for key in shared:
        assert torch.equal(init[key], official[key].reshape(init[key].shape)), key
    student = load_file(str(trained / "out" / "student_backbone.safetensors"))
    assert any(not torch.equal(student[k], init[k]) for k in init)  # it trained
    resolved = json.loads((trained / "out" / "resolved_config.json").read_text())
    assert resolved["values"]["global_size"] == 42 and resolved["values"]["lr_backbone"] == 5e-6
    ckpts = sorted(p.name for p in (trained / "ckpt").iterdir())
    assert ckpts == ["final.ckpt", "last.fingerprint"]


def test_export_cli_round_trip(trained: Path) -> None:
    out = trained / "exported.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "neco.models.export", "--ckpt", str(trained / "ckpt" / "final.ckpt"),
         "--backbone", "dinov2_vitb14", "--out", str(out), "--pos-embed-interp", "official"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_export_metadata(out)["backbone"] == "dinov2_vitb14"
    ours = trained / "out" / "student_backbone.safetensors"
    a, b = load_file(str(out)), load_file(str(ours))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    features = [
        FrozenExtractor(load_exported(p, "dinov2_vitb14", pos_embed_interp="official"))(x)
        for p in (out, ours)
    ]
    assert features[0].shape == (2, 12, 768)
    assert torch.equal(features[0], features[1])
