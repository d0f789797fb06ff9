"""Tests for neco.report.paper: strict CSV parsing, the backbone/dataset -> paper-label mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from neco.models.registry import BACKBONES
from neco.report.paper import (
    PAPER_COLUMNS,
    PaperResultsError,
    load_paper_results,
    lookup,
    paper_labels,
    paper_model_label,
    paper_setting,
    parse_paper_results,
)

CSV = Path(__file__).resolve().parents[1] / "data" / "paper" / "paper_results.csv"
HEADER = ",".join(PAPER_COLUMNS)


@pytest.fixture(scope="module")
def rows():  # type: ignore[no-untyped-def]
    return load_paper_results(CSV)


def _value(rows, backbone, role, protocol, dataset, **setting):  # type: ignore[no-untyped-def]
    ref = lookup(rows, backbone=backbone, role=role, protocol=protocol, dataset=dataset,
                 settings=paper_setting(protocol, **setting))
    return None if ref is None else (ref.value, ref.tag)


def test_repo_csv_parses_every_row(rows) -> None:  # type: ignore[no-untyped-def]
    assert len(rows) == 376  # 377 lines incl. header
    assert rows[0].line == 2 and rows[-1].line == 377
    first = rows[0]
    assert (first.table, first.method, first.backbone, first.dataset, first.setting,
            first.value) == ("T1a", "DINO", "ViT-S/16", "VOC", "K=GT", 4.3)


@pytest.mark.parametrize(
    "backbone, role, protocol, dataset, setting, expected",
    [
        # paper "NeCo (DINOv2R)" = XR (method.md §13); Table 2 and the key targets of eval §8
        ("dinov2_vits14_xr", "neco", "linear", "voc", {}, (81.3, "T2")),
        ("dinov2_vits14_xr", "init", "linear", "voc", {}, (74.2, "T2")),
        ("dinov2_vits14_xr", "neco", "linear", "ade20k", {}, (40.1, "T2")),
        ("dinov2_vitb14_xr", "init", "linear", "voc", {}, (79.8, "T2")),
        ("dinov2_vits14_xr", "neco", "overcluster", "voc", {"is_gt": True}, (17.8, "T1a")),
        ("dinov2_vits14_xr", "neco", "overcluster", "coco_things", {"k": 500}, (64.5, "T1a")),
        ("dinov2_vits14_xr", "init", "overcluster", "voc", {"k": 300}, (46.7, "T1a")),
        # Figure 2 wins over the README's 80.2 for 1/1
        ("dinov2_vits14_xr", "neco", "hbird", "voc", {"fraction": "1/1"}, (80.3, "F2")),
        ("dinov2_vits14_xr", "init", "hbird", "ade20k", {"fraction": "1/128"}, (19.6, "F2")),
        # DINO: Table 3 "NeCo (init: DINO)", README "NeCo on DINO" only where Table 3 has none
        ("dino_vits16", "neco", "overcluster", "voc", {"k": 500}, (47.9, "T3")),
        ("dino_vits16", "neco", "linear", "voc", {}, (61.3, "T3")),
        ("dino_vits16", "neco", "hbird", "voc", {"fraction": "1/1"}, (61.3, "README")),
        ("dino_vits16", "init", "hbird", "voc", {"fraction": "1/8"}, (41.3, "F2")),
        ("dino_vits16", "init", "linear", "coco_stuff", {}, (45.9, "T2")),
        # Table 1a comes before Table 3 where they disagree (TimeT COCO-Things K=GT)
        ("timetuning_vits16", "init", "overcluster", "coco_things", {"is_gt": True},
         (17.5, "T1a")),
        # true-register and no-register models: README rows only
        ("dinov2_vits14_reg", "neco", "linear", "voc", {}, (81.5, "README")),
        ("dinov2_vits14", "neco", "overcluster", "voc", {"k": 500}, (57.7, "README")),
    ],
)
def test_lookup_picks_the_paper_number(rows, backbone, role, protocol, dataset, setting,
                                       expected) -> None:  # type: ignore[no-untyped-def]
    assert _value(rows, backbone, role, protocol, dataset, **setting) == expected


@pytest.mark.parametrize(
    "backbone, role, protocol, dataset, setting",
    [
        ("vit_tiny_demo", "neco", "linear", "synthetic", {}),  # the CPU demo: dashes
        ("vit_tiny_demo", "init", "linear", "voc", {}),
        ("dinov2_vits14_xr", "neco", "linear", "synthetic", {}),
        ("dinov2_vits14_xr", "neco", "overcluster", "voc", {"k": 100}),  # K=100: extension
        ("dinov2_vits14_xr", "neco", "hbird", "coco_things", {"fraction": "1/1"}),
        ("dinov2_vits14", "init", "linear", "voc", {}),  # DINOv2 without registers: no row
        ("dino_vits16", "neco", "hbird", "voc", {"fraction": "1/8"}),  # README: 1/1 only
        ("dinov2_vits14_xr", "teacher", "linear", "voc", {}),
    ],
)
def test_lookup_gives_none_where_no_paper_number_applies(
        rows, backbone, role, protocol, dataset, setting) -> None:  # type: ignore[no-untyped-def]
    assert _value(rows, backbone, role, protocol, dataset, **setting) is None


def test_dip_reevaluations_are_never_used(rows) -> None:  # type: ignore[no-untyped-def]
    refs = [lookup(rows, backbone="dinov2_vits14_xr", role=r, protocol="hbird", dataset=d,
                   settings=paper_setting("hbird", fraction=f))
            for r in ("init", "neco") for d in ("voc", "ade20k")
            for f in ("1/1", "1/8", "1/64", "1/128")]
    assert all(ref is not None and "DIP" not in ref.row.method for ref in refs)


# Regression reference: the former PAPER_MODELS table of neco/report/paper.py (before the labels
# moved into the registry): backbone -> (arch, init labels, NeCo labels).
FORMER_PAPER_MODELS = {
    "dinov2_vits14_xr": ("ViT-S/14", ("DINOv2R",), ("NeCo", "NeCo on DINOv2R-XR")),
    "dinov2_vitb14_xr": ("ViT-B/14", ("DINOv2R",), ("NeCo", "NeCo on DINOv2R-XR")),
    "dinov2_vits14_reg": ("ViT-S/14", ("DINOv2R",), ("NeCo on DINOv2R",)),
    "dinov2_vitb14_reg": ("ViT-B/14", ("DINOv2R",), ("NeCo on DINOv2R",)),
    "dinov2_vits14": ("ViT-S/14", (), ("NeCo on DINOv2",)),
    "dinov2_vitb14": ("ViT-B/14", (), ("NeCo on DINOv2",)),
    "dino_vits16": ("ViT-S/16", ("DINO",), ("NeCo (init: DINO)", "NeCo on DINO")),
    "timetuning_vits16": ("ViT-S/16", ("TimeT",), ("NeCo (init: TimeT)", "NeCo on TimeT")),
    "leopart_vits16": ("ViT-S/16", ("Leopart",), ("NeCo (init: Leopart)", "NeCo on Leopart")),
    # added after the baselines check (Table 3 NeCo rows; Table 2 / Figure 2 ViT-B/16 baselines)
    "ibot_vits16": ("ViT-S/16", ("iBOT",), ("NeCo (init: iBOT)",)),
    "cribo_vits16": ("ViT-S/16", ("CrIBo",), ("NeCo (init: CrIBo)",)),
    "dino_vitb16": ("ViT-B/16", ("DINO",), ()),
    "ibot_vitb16": ("ViT-B/16", ("iBOT",), ()),
    "cribo_vitb16": ("ViT-B/16", ("CrIBo",), ()),
}


def test_paper_labels_come_from_the_registry_unchanged() -> None:
    got = {}
    for name, spec in BACKBONES.items():
        assert paper_labels(name) is spec.paper
        if spec.paper is not None:
            got[name] = (spec.paper.arch, spec.paper.init, spec.paper.neco)
            assert spec.paper.arch.endswith(f"/{spec.patch_size}")
    assert got == FORMER_PAPER_MODELS
    assert paper_labels("vit_huge") is None


def test_paper_labels_find_their_rows(rows) -> None:  # type: ignore[no-untyped-def]
    """Every label of every registry entry names at least one row of the repo CSV."""
    keys = {(r.method, r.backbone) for r in rows}
    for name, spec in BACKBONES.items():
        if spec.paper is not None:
            for method in spec.paper.init + spec.paper.neco:
                assert (method, spec.paper.arch) in keys, (name, method)


def test_paper_model_labels() -> None:
    assert paper_model_label("dinov2_vits14_xr", "init") == "DINOv2R ViT-S/14"
    assert paper_model_label("dinov2_vits14_xr", "neco") == "NeCo ViT-S/14"
    assert paper_model_label("dino_vits16", "neco") == "NeCo (init: DINO) ViT-S/16"
    assert paper_model_label("dinov2_vits14", "init") is None
    assert paper_model_label("vit_tiny_demo", "neco") is None


def test_paper_setting_strings() -> None:
    assert paper_setting("linear") == ("-",)
    assert paper_setting("overcluster", k=21, is_gt=True) == ("K=GT",)
    assert paper_setting("overcluster", k=300) == ("K=300",)
    assert paper_setting("hbird", fraction="1/1") == ("frac=1/1", "-")
    assert paper_setting("hbird", fraction="1/64") == ("frac=1/64",)


GOOD = "T2,NeCo,ViT-S/14,linear,VOC,-,81.3,paper Table 2,\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"x\.csv: empty file"),
        ("table,method\n" + GOOD, r"x\.csv:1: header"),
        (HEADER + "\n" + GOOD + "T2,NeCo,ViT-S/14,linear,VOC,-,81.3\n", r"x\.csv:3: 7 fields"),
        (HEADER + "\n" + GOOD + "T2,NeCo,ViT-S/14,linear,ADE20K,-,n/a,src,\n",
         r"x\.csv:3: value 'n/a' is not a finite number"),
        (HEADER + "\n" + GOOD + "T2,NeCo,ViT-S/14,linear,ADE20K,-,inf,src,\n",
         r"x\.csv:3: value 'inf'"),
        (HEADER + "\n" + GOOD + GOOD, r"x\.csv:3: duplicate of line 2"),
        (HEADER + "\n" + GOOD + "\n" + "T2,,ViT-S/14,linear,ADE20K,-,1,src,\n",
         r"x\.csv:4: empty 'method' field"),
    ],
)
def test_parse_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(PaperResultsError, match=match):
        parse_paper_results(text, source="x.csv")


def test_quoted_commas_and_blank_lines() -> None:
    text = HEADER + "\n\n" + 'README,NeCo on DINO,ViT-S/16,linear,VOC,-,65.8,README,"a, b"\n'
    (row,) = parse_paper_results(text, source="x.csv")
    assert row.note == "a, b" and row.line == 3 and row.value == 65.8


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_paper_results(tmp_path / "nope.csv")
