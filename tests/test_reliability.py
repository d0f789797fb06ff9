"""Reliability: every bad input the user can hand a stage ends in one line, never a traceback.

Each case runs a real stage entry point (``stages.<name>.main`` through ``neco.cli.run_stage``,
as ``python -m stages.<name>`` does; two cases run the subprocess itself) on one injected fault
in the data files, the archives, the params file, a weights file or the disk, and asserts

* exit status 1 and no traceback;
* exactly one ``error:`` line, naming the file / key / value and what was expected;
* no partial output that looks complete: the prepared tree, the archive with its ``.verified``
  marker, the generator's ``manifest.json``, the crop manifest or the exported weights are absent.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from neco.cli import run_stage
from tests.fixtures import voc_ade as fx
from tests.fixtures.http_server import LocalServer, http_server_fixture  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
RUNTIME = {**BASE["runtime"], "progress": False,
           "download": {"retries": 0, "timeout_s": 5.0, "backoff_s": 0.0}}
GENERATOR = {**BASE["datasets"]["synthetic"]["generator"], "num_train": 3, "num_val": 2,
             "sizes": [32, 40]}
VOC = Path("VOCdevkit") / "VOC2012"
BAD_ID = "demo_000002"  # a train id (prepared after val)


@pytest.fixture(autouse=True)
def _download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _main(stage: str) -> Callable[[list[str]], None]:
    module = __import__(f"stages.{stage}", fromlist=["main"])
    return module.main  # type: ignore[no-any-return]


def _fails(capsys: pytest.CaptureFixture[str], stage: str, argv: list[str],
           needles: tuple[str, ...]) -> str:
    """Run ``stages.<stage>.main(argv)`` as the CLI does; return its one ``error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_stage(lambda: _main(stage)(argv))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _no_leftovers(parent: Path, name: str) -> None:
    """No hidden staging/temporary folder of ``name`` is left in ``parent``."""
    if parent.is_dir():
        left = [p.name for p in parent.iterdir()
                if p.name.startswith(f".{name}.") and not p.name.endswith(".extract")]
        assert not left, left


# ----------------------------------------------------------------- prepare@synthetic: data


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neco.data.sources.synthetic_images import SyntheticConfig, generate

    raw = tmp_path_factory.mktemp("reliability") / "raw" / "synthetic"
    generate(SyntheticConfig(**GENERATOR), raw, progress=False)
    return raw


def _synthetic_params(path: Path, generator: dict[str, Any] | None = None) -> Path:
    return _write_params(path, {"runtime": RUNTIME, "datasets": {
        "synthetic": {"generator": generator or GENERATOR}}})


def _jpeg(raw: Path) -> Path:
    return raw / VOC / "JPEGImages" / f"{BAD_ID}.jpg"


def _png(raw: Path) -> Path:
    return raw / VOC / "SegmentationClass" / f"{BAD_ID}.png"


def _edit_mask(raw: Path, edit: Callable[[np.ndarray], np.ndarray], mode: str = "L") -> None:
    arr = edit(np.array(Image.open(_png(raw))))
    Image.fromarray(arr).convert(mode).save(_png(raw))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _list(raw: Path, split: str) -> Path:
    return raw / VOC / "ImageSets" / "Segmentation" / f"{split}.txt"


DATA_FAULTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated_jpeg": (lambda r: _truncate(_jpeg(r), 0.6),
                       (f"{BAD_ID}.jpg", "cannot decode image", "truncated")),
    "jpeg_is_text": (lambda r: _jpeg(r).write_bytes(b"<html>not an image</html>"),
                     (f"{BAD_ID}.jpg", "cannot decode image")),
    "label_out_of_range": (lambda r: _edit_mask(r, lambda m: np.where(m == 0, 9, m).astype(
        np.uint8)), (f"{BAD_ID}.png", "label value(s) [9] outside [0, 7)", "ignore index 255")),
    "mask_size_differs": (lambda r: _edit_mask(r, lambda m: m[:-3]),
                          (f"{BAD_ID}.png", "mask size", "differs from image")),
    "mask_is_rgb": (lambda r: _edit_mask(r, lambda m: m, mode="RGB"),
                    (f"{BAD_ID}.png", "mode 'RGB'", "expected one of ['L', 'P']")),
    "truncated_mask_png": (lambda r: _truncate(_png(r), 0.5),
                           (f"{BAD_ID}.png", "cannot decode mask PNG")),
    "duplicate_id_in_list": (lambda r: _list(r, "train").write_text(
        f"demo_000001\n{BAD_ID}\n{BAD_ID}\n"), ("train.txt", f"duplicate id '{BAD_ID}'")),
    "id_list_not_utf8": (lambda r: _list(r, "train").write_bytes(b"demo_000001\n\xff\xfe\n"),
                         ("train.txt", "not UTF-8")),
    "train_val_overlap": (lambda r: _list(r, "val").write_text(
        f"{BAD_ID}\ndemo_000004\ndemo_000005\n"), ("train.txt and val.txt overlap", BAD_ID)),
    "image_missing": (lambda r: _jpeg(r).unlink(), (f"{BAD_ID}.jpg", "not found")),
    "manifest_not_json": (lambda r: (r / "manifest.json").write_text("{truncated"),
                          ("manifest.json", "invalid JSON", "download@synthetic")),
    "manifest_other_params": (lambda r: (r / "manifest.json").write_text(
        (r / "manifest.json").read_text().replace('"num_val": 2', '"num_val": 3')),
        ("manifest.json", "generated with other parameters", "download@synthetic")),
    "raw_not_generated": (lambda r: shutil.rmtree(r),
                          ("manifest.json", "not found", "run the download@synthetic stage")),
}


@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_prepare_synthetic_bad_data_file(fault: str, synthetic_raw: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    raw, out = tmp_path / "raw" / "synthetic", tmp_path / "prepared" / "synthetic"
    shutil.copytree(synthetic_raw, raw)
    inject, needles = DATA_FAULTS[fault]
    inject(raw)
    params = _synthetic_params(tmp_path / "params.yaml")
    _fails(capsys, "prepare", ["--params", str(params), "--dataset", "synthetic",
                               "--raw", str(raw), "--out", str(out)], needles)
    assert not out.exists()
    _no_leftovers(out.parent, "synthetic")


def test_prepare_subprocess_truncated_jpeg_is_one_line(synthetic_raw: Path,
                                                       tmp_path: Path) -> None:
    """The real ``python -m stages.prepare``: status 1, one stderr line, no traceback."""
    raw, out = tmp_path / "raw" / "synthetic", tmp_path / "prepared" / "synthetic"
    shutil.copytree(synthetic_raw, raw)
    _truncate(_jpeg(raw), 0.6)
    params = _synthetic_params(tmp_path / "params.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "stages.prepare", "--params", str(params), "--dataset",
         "synthetic", "--raw", str(raw), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{BAD_ID}.jpg: cannot decode image" in errors[0], proc.stderr
    assert not out.exists()


# ------------------------------------------------------------ ade20k: archives and downloads


def _ade_members(**changes: bytes | None) -> dict[str, bytes]:
    members = fx.ade_members()
    for name, data in changes.items():
        key = f"ADEChallengeData2016/{name}"
        if data is None:
            members.pop(key)
        else:
            members[key] = data
    return members


def _ade_block(md5: str | None, *, urls: list[str] | None = None, size: int | None = None,
               local_path: str | None = None) -> dict[str, Any]:
    return {"archives": {"ade20k": {"filename": fx.ADE_ZIP, "urls": urls or [], "md5": md5,
                                    "sha1": None, "size": size, "local_path": local_path}},
            "hbird_sets": None, "verify_counts": False, "cache_dir": None}


def _verified_archive(raw: Path, data: bytes) -> str:
    """Put ``data`` into ``raw`` as the downloaded archive, with a valid ``.verified`` marker."""
    from neco.download.fetch import fetch

    src = raw.parent / "src.bin"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    fetch([], raw / fx.ADE_ZIP, md5=md5, local_path=src, retries=0, timeout_s=1.0,
          backoff_s=0.0, progress=False)
    return md5


def _zip_bytes(tmp: Path, members: dict[str, bytes]) -> bytes:
    return fx.write_zip(tmp / "build.zip", members).read_bytes()


def _zip_with_member(tmp: Path, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(tmp / "evil.zip", "w") as zf:
        zf.writestr("ADEChallengeData2016/objectInfo150.txt", b"")
        zf.writestr(name, b"x")
    return (tmp / "evil.zip").read_bytes()


def _truncated_image_member(tmp: Path) -> bytes:
    good = fx.ade_members()["ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"]
    return _zip_bytes(tmp, _ade_members(**{
        "images/validation/ADE_val_00000001.jpg": good[: len(good) // 2]}))


ARCHIVE_FAULTS: dict[str, tuple[Callable[[Path], bytes | None], tuple[str, ...]]] = {
    "truncated_jpeg_in_good_archive": (_truncated_image_member, (
        "ADE_val_00000001.jpg", "cannot decode image")),
    "archive_is_garbage": (lambda t: b"\x00garbage" * 100, (
        fx.ADE_ZIP, "neither a zip nor a tar archive")),
    "archive_member_escapes": (lambda t: _zip_with_member(t, "../evil.txt"), (
        "'../evil.txt'", "'..' component; refused")),
    "annotation_missing": (lambda t: _zip_bytes(t, _ade_members(
        **{"annotations/validation/ADE_val_00000001.png": None})), (
        "ADE_val_00000001.png", "mask file not found")),
    "archive_not_downloaded": (lambda t: None, (
        fx.ADE_ZIP, "archive not found", "download@ade20k")),
}


@pytest.mark.parametrize("fault", sorted(ARCHIVE_FAULTS))
def test_prepare_ade20k_bad_archive(fault: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    raw, out = tmp_path / "raw" / "ade20k", tmp_path / "prepared" / "ade20k"
    raw.mkdir(parents=True)
    data = ARCHIVE_FAULTS[fault][0](tmp_path)
    md5 = _verified_archive(raw, data) if data is not None else "0" * 32
    params = _write_params(tmp_path / "params.yaml",
                           {"runtime": RUNTIME, "datasets": {"ade20k": _ade_block(md5)}})
    _fails(capsys, "prepare", ["--params", str(params), "--dataset", "ade20k", "--raw", str(raw),
                               "--out", str(out)], ARCHIVE_FAULTS[fault][1])
    assert not out.exists()
    _no_leftovers(out.parent, "ade20k")


def test_prepare_ade20k_archive_without_marker(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    raw, out = tmp_path / "raw" / "ade20k", tmp_path / "prepared" / "ade20k"
    raw.mkdir(parents=True)
    (raw / fx.ADE_ZIP).write_bytes(_zip_bytes(tmp_path, fx.ade_members()))  # never verified
    params = _write_params(tmp_path / "params.yaml",
                           {"runtime": RUNTIME, "datasets": {"ade20k": _ade_block(None)}})
    _fails(capsys, "prepare", ["--params", str(params), "--dataset", "ade20k", "--raw", str(raw),
                               "--out", str(out)],
           (fx.ADE_ZIP, "no valid .verified marker", "download@ade20k"))
    assert not out.exists()


BODY = bytes(range(256)) * 64
BODY_MD5 = hashlib.md5(BODY).hexdigest()

DOWNLOAD_FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    # name: (route kwargs, archive param overrides, needles)
    "md5_mismatch": ({}, {"md5": "f" * 32}, (
        f"md5 mismatch for {fx.ADE_ZIP}: expected {'f' * 32}, got {BODY_MD5}",)),
    "size_mismatch": ({}, {"size": len(BODY) + 1}, (
        f"server announces {len(BODY)} bytes, expected {len(BODY) + 1}",)),
    "http_404": ({"status": 404}, {}, ("HTTP 404", "datasets.ade20k.archives.ade20k.urls",
                                       "datasets.ade20k.archives.ade20k.local_path")),
    "html_error_page": ({"content_type": "text/html"}, {}, ("HTML page",)),
    "truncated_body": ({"truncate_at": 1000}, {}, ("truncated body", "is kept in",
                                                   "the next run resumes")),
    "local_path_missing": ({}, {"local_path": "/nonexistent/ADE.zip", "urls": []}, (
        "local_path /nonexistent/ADE.zip", "datasets.ade20k.archives.ade20k.local_path",
        "does not exist")),
}


@pytest.mark.parametrize("fault", sorted(DOWNLOAD_FAULTS))
def test_download_ade20k_fault(fault: str, http_server: LocalServer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    route, overrides, needles = DOWNLOAD_FAULTS[fault]
    url = http_server.add(f"/{fx.ADE_ZIP}", BODY, **route)
    block = _ade_block(BODY_MD5, urls=[url])
    block["archives"]["ade20k"].update(overrides)
    params = _write_params(tmp_path / "params.yaml",
                           {"runtime": RUNTIME, "datasets": {"ade20k": block}})
    out = tmp_path / "raw" / "ade20k"
    _fails(capsys, "download", ["--params", str(params), "--dataset", "ade20k", "--out", str(out)],
           needles)
    assert not (out / fx.ADE_ZIP).exists() and not (out / f"{fx.ADE_ZIP}.verified").exists()
    assert not list(out.glob("*.part")), "partial downloads never live in the output"


# ------------------------------------------------------------------------------ params files


def _with(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    params = {"runtime": copy.deepcopy(RUNTIME),
              "datasets": {"synthetic": {"generator": dict(GENERATOR)}}}
    edit(params)
    return params


PARAMS_FAULTS: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "unknown_top_level_key": (
        lambda t: _write_params(t / "p.yaml", {"datsets": {}, **_with(lambda p: None)}),
        "download", ("unknown top-level key(s) ['datsets']", "'datasets'", "'train'")),
    "wrong_type": (
        lambda t: _write_params(t / "p.yaml", _with(
            lambda p: p["runtime"].update(progress="yes"))),
        "download", ("runtime.progress: expected bool, got 'yes'",)),
    "unknown_nested_key": (
        lambda t: _write_params(t / "p.yaml", _with(
            lambda p: p["datasets"]["synthetic"]["generator"].update(num_trian=3))),
        "download", ("datasets.synthetic.generator.num_trian",)),
    "value_out_of_range": (
        lambda t: _write_params(t / "p.yaml", _with(
            lambda p: p["datasets"]["synthetic"]["generator"].update(num_train=0))),
        "download", ("datasets.synthetic.generator.num_train=0: expected >= 1",)),
    "bad_yaml": (lambda t: _write(t / "p.yaml", "runtime: [unclosed\n"),
                 "download", ("p.yaml: cannot parse YAML",)),
    "params_file_missing": (lambda t: t / "nope.yaml", "download",
                            ("nope.yaml: params file not found",)),
    "voc_archive_key_missing": (
        lambda t: _write_params(t / "p.yaml", {"runtime": RUNTIME, "datasets": {"voc": {
            "archives": {}, "use_sbd": False, "trainaug_masks": "voc_first", "hbird_sets": None,
            "verify_counts": False, "cache_dir": None}}}),
        "download", ("datasets.voc.archives: missing ['voc2012']",)),
    "in100_without_local_path": (
        lambda t: _write_params(t / "p.yaml", {"runtime": RUNTIME, "datasets": {"in100": {
            "archives": {"imagenet_train": {"filename": "ILSVRC2012_img_train.tar", "urls": [],
                                            "md5": None, "sha1": None, "size": None,
                                            "local_path": None}},
            "class_list": None, "verify_counts": False, "cache_dir": None}}}),
        "download", ("datasets.in100.archives.imagenet_train.local_path",
                     "never downloaded automatically")),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("fault", sorted(PARAMS_FAULTS))
def test_bad_params_file(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, stage, needles = PARAMS_FAULTS[fault]
    params = make(tmp_path)
    dataset = next((d for d in ("voc", "in100") if d in fault), "synthetic")
    out = tmp_path / "raw" / dataset
    _fails(capsys, stage, ["--params", str(params), "--dataset", dataset, "--out", str(out)],
           needles)
    assert not (out / "manifest.json").exists()
    _no_leftovers(out.parent, dataset)


@pytest.fixture(scope="module")
def prepared_synthetic(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neco.config import load_section
    from neco.data.sources.synthetic import SyntheticSourceConfig, prepare_synthetic

    params = _synthetic_params(tmp_path_factory.mktemp("prep") / "params.yaml")
    cfg = load_section(params, "datasets.synthetic", SyntheticSourceConfig)
    out = tmp_path_factory.mktemp("prepared") / "synthetic"
    prepare_synthetic(cfg, synthetic_raw, out, progress=False)
    return out


def _crops_argv(tmp_path: Path, data: Path, edit: Callable[[dict[str, Any]], None]) -> list[str]:
    params = copy.deepcopy(BASE)
    params["datasets"]["synthetic"]["generator"] = dict(GENERATOR)
    edit(params)
    path = _write_params(tmp_path / "params.yaml", params)
    return ["--params", str(path), "--dataset", "synthetic", "--data", str(data),
            "--out", str(tmp_path / "crops" / "manifest.parquet")]


@pytest.mark.parametrize(("key", "value"), [("local_scale", [-0.1, 0.25]),
                                            ("ratio", [-1.0, 1.3333])])
def test_crops_stage_negative_scale_or_ratio(key: str, value: list[float], tmp_path: Path,
                                             prepared_synthetic: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Used to end in ``math domain error``; now a ConfigError naming ``crops.<key>``."""
    argv = _crops_argv(tmp_path, prepared_synthetic, lambda p: p["crops"].update({key: value}))
    _fails(capsys, "crops", argv, (f"crops.{key}={value}", "expected [lo, hi] with 0.0 < lo"))
    assert not (tmp_path / "crops").exists() or not any((tmp_path / "crops").iterdir())


def test_crops_stage_bad_prepared_split(tmp_path: Path, prepared_synthetic: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "prepared" / "synthetic"
    shutil.copytree(prepared_synthetic, data)
    (data / "splits" / "train.txt").write_text("demo_000003\ndemo_000001\n")
    _fails(capsys, "crops", _crops_argv(tmp_path, data, lambda p: None),
           ("train.txt: line 2: unsorted id 'demo_000001'",))
    assert not (tmp_path / "crops").exists() or not any((tmp_path / "crops").iterdir())


@pytest.fixture(scope="module")
def protocols() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The protocol entry points (imported once: faiss and friends take seconds)."""
    from neco.evals.hbird import hummingbird
    from neco.evals.linear import linear_probe

    return linear_probe, hummingbird


def test_eval_protocols_check_crop_ranges_first(
        protocols: tuple[Callable[..., Any], Callable[..., Any]]) -> None:
    """``linear_probe`` / ``hummingbird`` validate their crop ranges before touching anything
    (a negative ``crop_scale`` used to end in torchvision's "math domain error")."""
    from dataclasses import replace

    from neco.config import ConfigError, EvalConfig, load_section

    linear_probe, hummingbird = protocols

    ev = load_section(ROOT / "params.yaml", "eval", EvalConfig)
    lin = replace(ev.linear, crop_scale=[-0.5, 1.0])
    with pytest.raises(ConfigError, match=r"eval\.linear\.crop_scale=\[-0\.5, 1\.0\]"):
        linear_probe(None, None, None, lin, device=None, seed=0,  # type: ignore[arg-type]
                     figure_examples=0)
    hb = replace(ev.hbird, crop_ratio=[0.75, float("nan")])
    with pytest.raises(ConfigError, match=r"eval\.hbird\.crop_ratio=\[0\.75, nan\]"):
        hummingbird(None, None, None, hb, device=None, seed=0,  # type: ignore[arg-type]
                    runtime=None)


# ----------------------------------------------------------------------------- weights files


def _weights_file(tmp_path: Path, kind: str) -> Path:
    import torch

    path = tmp_path / ("w.safetensors" if kind == "pth_named_safetensors" else "w.pth")
    if kind == "garbage":
        path.write_bytes(bytes(range(256)) * 20)
    elif kind == "truncated":
        torch.save({"w": torch.zeros(256)}, path)
        _truncate(path, 0.3)
    elif kind == "pth_named_safetensors":
        torch.save({"w": torch.zeros(256)}, path)
    return path  # "missing": never written


@pytest.mark.parametrize(("kind", "needles"), [
    ("missing", ("train.weights", "w.pth not found")),
    ("garbage", ("w.pth: cannot read the checkpoint",)),
    ("truncated", ("w.pth: cannot read the checkpoint",)),
    ("pth_named_safetensors", ("w.safetensors", "torch zip/pickle", "own suffix")),
])
def test_weights_stage_bad_weights_file(kind: str, needles: tuple[str, ...], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    params = copy.deepcopy(BASE)
    params["train"].update(backbone="dino_vits16", weights=str(_weights_file(tmp_path, kind)))
    path = _write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "models" / "init"
    _fails(capsys, "weights", ["--params", str(path), "--out", str(out)], needles)
    assert not (out / "init_backbone.safetensors").exists()


# ------------------------------------------------------------------------------- disk full


def _enospc_after(n: int, real: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def write(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return write


def test_disk_full_generating_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from neco.data.sources import synthetic_images

    monkeypatch.setattr(synthetic_images, "_write", _enospc_after(3, synthetic_images._write))
    out = tmp_path / "raw" / "synthetic"
    params = _synthetic_params(tmp_path / "params.yaml")
    _fails(capsys, "download", ["--params", str(params), "--dataset", "synthetic",
                                "--out", str(out)], (f"{out}: no space left on device",))
    assert not (out / "manifest.json").exists()
    _no_leftovers(out.parent, "synthetic")


def test_disk_full_preparing(synthetic_raw: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from neco.data.sources import voc

    monkeypatch.setattr(voc, "write_label_png", _enospc_after(2, voc.write_label_png))
    out = tmp_path / "prepared" / "synthetic"
    params = _synthetic_params(tmp_path / "params.yaml")
    _fails(capsys, "prepare", ["--params", str(params), "--dataset", "synthetic",
                               "--raw", str(synthetic_raw), "--out", str(out)],
           (f"{out}: no space left on device",))
    assert not out.exists()
    _no_leftovers(out.parent, "synthetic")


def test_disk_full_extracting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while unzipping used to read "corrupt member"; it names the disk now."""
    import zipfile

    raw, out = tmp_path / "raw" / "ade20k", tmp_path / "prepared" / "ade20k"
    raw.mkdir(parents=True)
    md5 = _verified_archive(raw, _zip_bytes(tmp_path, fx.ade_members()))
    monkeypatch.setattr(zipfile.ZipFile, "extract", _enospc_after(4, zipfile.ZipFile.extract))
    params = _write_params(tmp_path / "params.yaml",
                           {"runtime": RUNTIME, "datasets": {"ade20k": _ade_block(md5)}})
    line = _fails(capsys, "prepare", ["--params", str(params), "--dataset", "ade20k", "--raw",
                                      str(raw), "--out", str(out)],
                  ("no space left on device", f"extracting {fx.ADE_ZIP}"))
    assert "corrupt" not in line
    assert not out.exists() and not (out.parent / ".ade20k.extract" / "ade20k").exists()


def test_disk_full_downloading(http_server: LocalServer, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from neco.download import transfer

    url = http_server.add(f"/{fx.ADE_ZIP}", BODY)
    real_open = open

    def full_disk_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "ab":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(transfer, "open", full_disk_open, raising=False)
    params = _write_params(tmp_path / "params.yaml", {"runtime": RUNTIME, "datasets": {
        "ade20k": _ade_block(BODY_MD5, urls=[url])}})
    out = tmp_path / "raw" / "ade20k"
    _fails(capsys, "download", ["--params", str(params), "--dataset", "ade20k", "--out", str(out)],
           (f"{fx.ADE_ZIP}.md5-{BODY_MD5}.part: no space left on device", "next run resumes"))
    assert not (out / fx.ADE_ZIP).exists() and not (out / f"{fx.ADE_ZIP}.verified").exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4736 vs 4624: "
                 "basic_ios::clear: iostream error"),
    OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
], ids=["cxx_iostream_error", "arrow_errno_in_text"])
def test_disk_full_writing_crop_manifest(error: BaseException, tmp_path: Path,
                                         prepared_synthetic: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A writer that loses the errno (C++ streams, pyarrow) on a full disk: still one line."""
    from neco import io as nio
    from neco.method import manifest

    def failing_write(table: Any, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1 partial")
        raise error

    monkeypatch.setattr(manifest.pq, "write_table", failing_write)
    monkeypatch.setattr(nio, "free_bytes", lambda path: 0)  # the disk is full
    argv = _crops_argv(tmp_path, prepared_synthetic, lambda p: None)
    _fails(capsys, "crops", argv, ("manifest.parquet: no space left on device", "0.0 MiB free"))
    crops = tmp_path / "crops"
    assert not crops.exists() or not list(crops.iterdir()), "no manifest, no temporary file"
