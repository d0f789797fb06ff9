"""Tests for the report stage: collect, roll-up, markdown tables, settings flags, stage main()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neco.config.sections import ReportConfig
from neco.report.collect import ReportInputError, collect, load_metrics, rollup
from neco.report.document import HEADER, render_tables
from neco.report.paper import load_paper_results
from neco.report.settings import parse_paper_settings, setting_differences

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "data" / "paper" / "paper_results.csv"
CFG = ReportConfig(
    paper_settings_linear=["input_size=448", "eval_mask_size=100", "model_selection=best_val"],
    paper_settings_overcluster=["input_size=448", "kmeans.niter=100"],
    paper_settings_hbird=["input_size=504|512", "nn=scann"],
)
DEMO_LINEAR = {"input_size": 112, "eval_mask_size": 28, "model_selection": "best_val"}
PAPER_LINEAR = {"input_size": 448, "eval_mask_size": 100, "model_selection": "best_val"}


def linear(miou: float, *, fp: str = "linear[S112]", settings: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {"miou": miou, "miou_best_val": miou, "miou_last": miou - 0.01, "best_epoch": 3,
            "fingerprint": fp, "settings": settings or DEMO_LINEAR, "seed": 400}


def cluster(means: dict[int, float], *, c: int, cap: dict[int, int] | None = None,
            std: float | None = 0.01) -> dict[str, Any]:
    cap = cap or {}
    results = [{"k_requested": k, "k_used": cap.get(k, k), "capped": k in cap,
                "under_clustering": cap.get(k, k) < c,
                "matching": "hungarian" if k == c else "many_to_one_precision",
                "mean": m, "std": std, "miou_per_seed": [m], "seeds": [0]}
               for k, m in means.items()]
    return {"miou": means.get(c), "results": results, "fingerprint": "cluster[S112]",
            "settings": {"input_size": 112, "kmeans": {"niter": 100}}}


def hbird(means: dict[str, float], *, std: float = 0.02) -> dict[str, Any]:
    results = [{"fraction": f, "mean": m, "std": None if f == "1/1" else std,
                "runs": [{"subset_seed": s, "miou": m, "derived_subset": f != "1/1"}
                         for s in ([42] if f == "1/1" else [42, 400])]}
               for f, m in means.items()]
    return {"miou": means.get("1/1"), "results": results, "fingerprint": "hbird[S112]",
            "settings": {"input_size": 112, "nn": "exact"}, "nn_backend": "faiss_flat",
            "recall_at_k": None}


def entry(protocol: str, dataset: str, models: dict[str, Any],
          backbone: str = "vit_tiny_demo") -> dict[str, Any]:
    return {"protocol": protocol, "dataset": dataset, "backbone": backbone, "models": models}


SUMMARY = {"initial_loss": 3.912345, "final_loss": 3.51234, "steps": 12, "epochs": 2,
           "images_per_s": 7.456, "s_per_step": 1.1, "backbone": "vit_tiny_demo", "wall_s": 20.0}


def demo_entries() -> list[Any]:
    return [
        collect(entry("linear", "synthetic", {"init": linear(0.31234), "neco": linear(0.35)}),
                source="l.json"),
        collect(entry("overcluster", "synthetic", {
            "init": cluster({7: 0.2, 14: 0.3, 28: 0.4}, c=7),
            "neco": cluster({7: 0.25, 14: 0.33, 28: 0.41}, c=7)}), source="o.json"),
        collect(entry("hbird", "synthetic", {
            "init": hbird({"1/1": 0.5, "1/8": 0.4}), "neco": hbird({"1/1": 0.45, "1/8": 0.41})}),
            source="h.json"),
    ]


def test_rollup_exact_keys_and_values() -> None:
    got = rollup(demo_entries(), SUMMARY, train_source="summary.json")
    assert got == {
        "hbird.synthetic.delta": -5.0,  # NeCo below init: negative
        "hbird.synthetic.init.f1_1.miou": 50.0,
        "hbird.synthetic.init.f1_8.miou": 40.0,
        "hbird.synthetic.neco.f1_1.miou": 45.0,
        "hbird.synthetic.neco.f1_8.miou": 41.0,
        "linear.synthetic.delta": 3.77,  # 35 - 31.234, rounded once
        "linear.synthetic.init.miou": 31.23,
        "linear.synthetic.neco.miou": 35.0,
        "overcluster.synthetic.delta": 5.0,  # at K = C
        "overcluster.synthetic.init.k14.miou": 30.0,
        "overcluster.synthetic.init.k28.miou": 40.0,
        "overcluster.synthetic.init.k7.miou": 20.0,
        "overcluster.synthetic.neco.k14.miou": 33.0,
        "overcluster.synthetic.neco.k28.miou": 41.0,
        "overcluster.synthetic.neco.k7.miou": 25.0,
        "train.final_loss": 3.5123,
        "train.initial_loss": 3.9123,
        "train.steps": 12,
    }
    assert list(got) == sorted(got)


def test_rollup_keys_by_k_used_and_skips_missing_primary() -> None:
    e = collect(entry("overcluster", "synthetic", {
        "init": cluster({14: 0.3, 28: 0.4}, c=7, cap={28: 20}),
        "neco": cluster({14: 0.35, 28: 0.5}, c=7, cap={28: 20})}), source="o.json")
    got = rollup([e], {"final_loss": 1.0}, train_source="s.json")
    assert got == {"overcluster.synthetic.init.k14.miou": 30.0,
                   "overcluster.synthetic.init.k20.miou": 40.0,
                   "overcluster.synthetic.neco.k14.miou": 35.0,
                   "overcluster.synthetic.neco.k20.miou": 50.0,
                   "train.final_loss": 1.0}  # no K = C run: no delta


def test_rollup_requires_final_loss() -> None:
    with pytest.raises(ReportInputError, match=r"s\.json: final_loss: missing"):
        rollup([], {"steps": 3}, train_source="s.json")
    with pytest.raises(ReportInputError, match=r"s\.json: final_loss: expected a finite"):
        rollup([], {"final_loss": None}, train_source="s.json")
    # train.max_steps = 0 (evaluate a checkpoint without training): no loss is expected
    assert rollup([], {"final_loss": None, "initial_loss": None, "steps": 0},
                  train_source="s.json") == {"train.steps": 0}


@pytest.mark.parametrize(
    "obj, kwargs, match",
    [
        (entry("linear", "voc", {"neco": linear(0.5)}), {"dataset": "ade20k"},
         r"f\.json: dataset: 'voc' does not match the file location \('ade20k'\)"),
        (entry("linear", "voc", {"neco": {"fingerprint": "x", "settings": {}}}), {},
         r"f\.json: models\.neco\.miou: missing"),
        (entry("linear", "voc", {"neco": linear(45.3)}), {},
         r"f\.json: models\.neco\.miou: mIoU 45\.3 is not a fraction in \[0, 1\]"),
        (entry("linear", "voc", {"neco": {**linear(0.5), "fingerprint": 3}}), {},
         r"models\.neco\.fingerprint: expected str"),
        (entry("overcluster", "voc", {"neco": {**cluster({21: 0.1}, c=21), "results": []}}), {},
         r"models\.neco\.results: empty list"),
        (entry("hbird", "voc", {"neco": {**hbird({"1/1": 0.5}),
                                          "results": [{"fraction": "1:8", "mean": 0.1,
                                                       "runs": []}]}}), {},
         r"models\.neco\.results\[0\]\.fraction: expected 'a/b'"),
        (entry("linear", "voc", {}), {}, r"f\.json: models: no models"),
        ([1, 2], {}, r"f\.json: expected a JSON object"),
    ],
)
def test_collect_errors_name_file_and_key(obj: Any, kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ReportInputError, match=match):
        collect(obj, source="f.json", **kwargs)


def test_setting_differences() -> None:
    paper = parse_paper_settings(["input_size=504|512", "nn=scann", "a.b=0.02", "flag=true"],
                                 key="k")
    ours = {"input_size": 504, "nn": "exact", "a": {"b": 2e-2}, "flag": True}
    assert setting_differences(ours, paper) == ["nn=exact (paper scann)"]
    assert setting_differences({"input_size": 112, "nn": "SCANN", "flag": False}, paper) == [
        "input_size=112 (paper 504|512)", "a.b: not recorded (paper 0.02)",
        "flag=false (paper true)"]
    with pytest.raises(ReportInputError, match=r"report\.x\[1\]: 'nn'; expected 'key=value"):
        parse_paper_settings(["k=1", "nn"], key="report.x")


@pytest.fixture(scope="module")
def paper_rows():  # type: ignore[no-untyped-def]
    return load_paper_results(PAPER_CSV)


def _render(entries: list[Any], paper_rows: Any, **kw: Any) -> str:
    return render_tables(entries, train_summary=SUMMARY,
                         resolved_config=kw.pop("resolved", {"backbone": "vit_tiny_demo"}),
                         paper_rows=paper_rows, cfg=CFG, loss_figure="figures/training_loss.png",
                         figures=kw.pop("figures", []))


def test_markdown_paper_rows_for_xr_on_voc_linear(paper_rows) -> None:  # type: ignore[no-untyped-def]
    """XR: the paper's DINOv2R row sits beside our ``baseline`` (the register model), not the
    XR ``init``, and both Δ rows are NeCo − baseline (tests/test_baselines.py has more)."""
    e = collect(entry("linear", "voc", {"init": linear(0.7412, settings=PAPER_LINEAR),
                                        "neco": linear(0.80049, settings=PAPER_LINEAR),
                                        "baseline": linear(0.7301, settings=PAPER_LINEAR)},
                      backbone="dinov2_vits14_xr"), source="voc.json")
    md = _render([e], paper_rows)
    assert ("| model | VOC |\n|:---|---:|\n"
            "| baseline `dinov2_vits14_reg` (ours) | 73.0 [1] |\n"
            "| baseline `dinov2_vits14_reg`, paper: DINOv2R ViT-S/14 | 74.2 (T2) |\n"
            "| init (XR: registers dropped) (ours) | 74.1 [1] |\n"
            "| NeCo (ours) | 80.0 [1] |\n"
            "| NeCo, paper: NeCo ViT-S/14 | 81.3 (T2) |\n"
            "| Δ NeCo − baseline `dinov2_vits14_reg` (ours) | +7.0 |\n"
            "| Δ, paper | +7.1 |\n"
            "| Δ NeCo − init (XR: registers dropped) (ours) | +5.9 |\n") in md
    assert "- [1] linear (VOC baseline, VOC init, VOC NeCo): `linear[S112]`; matches the paper " \
           "setting" in md
    assert "Backbone `dinov2_vits14_xr`; paper rows: baseline = DINOv2R ViT-S/14 beside our " \
           "`baseline` (`dinov2_vits14_reg`: the same weight file with its 4 registers), NeCo = " \
           "NeCo ViT-S/14; Δ = NeCo − baseline." in md


def test_markdown_demo_has_dashes_flags_and_sections(paper_rows) -> None:  # type: ignore[no-untyped-def]
    md = _render(demo_entries(), paper_rows, resolved={
        "backbone": "vit_tiny_demo", "preset": "demo", "recipe": "project CPU demo",
        "values": {"lr_backbone": 1e-4, "epochs": 2, "roi_k": 4},
        "origin": {"lr_backbone": "recipe", "epochs": "params", "roi_k": "recipe"},
        "params_keys": {"lr_backbone": "train.lr_backbone", "epochs": "train.epochs",
                        "roi_k": "train.loss.roi_k"},
        "paper": {"lr_backbone": None, "epochs": None, "roi_k": 7},
        "deviations": {"train.loss.roi_k": {"value": 4, "paper": 7},
                       "data.train": {"value": "synthetic", "paper": "coco"}},
        "matches_paper": False, "summary": "vit_tiny_demo: 2 training setting(s) differ"},
        figures=["figures/hbird_synthetic.png"])
    assert md.startswith(HEADER + "\n")
    # clustering like Table 1a: K = C first, mean ± std, paper dashes, Δ per column
    assert ("| model | synthetic K=7 (GT) | synthetic K=14 | synthetic K=28 |\n"
            "|:---|---:|---:|---:|\n"
            "| init (ours) | 20.0 ± 1.0 [1]⚑ | 30.0 ± 1.0 [1]⚑ | 40.0 ± 1.0 [1]⚑ |\n"
            "| init, paper: – | – | – | – |\n") in md
    assert "| Δ NeCo − init (ours) | +5.0 | +3.0 | +1.0 |\n| Δ, paper | – | – | – |" in md
    # linear like Table 2
    assert ("| init (ours) | 31.2 [2]⚑ |\n| init, paper: – | – |\n"
            "| NeCo (ours) | 35.0 [2]⚑ |\n") in md
    assert "- synthetic NeCo: best-val 35.0 (epoch 3), last 34.0" in md
    # in-context like Figure 2: fractions as run, std over subsets only below 1/1, negative Δ
    assert "| dataset · model | memory 1/1 | memory 1/8 |" in md
    assert "| synthetic · init (ours) | 50.0 [3]⚑ | 40.0 ± 2.0 [3]⚑ |" in md
    assert "| synthetic · Δ NeCo − init (ours) | -5.0 | +1.0 |" in md
    assert "derived subsets (not the HB file sets) at 1/8" in md
    # settings footnotes with what differs
    assert ("- [1] overcluster (synthetic init, synthetic NeCo): `cluster[S112]`; ⚑ differs "
            "from the paper setting: input_size=112 (paper 448)") in md
    assert "input_size=112 (paper 504|512); nn=exact (paper scann)" in md  # the test cfg
    # training, config with origin, figures
    assert "![training loss](figures/training_loss.png)" in md
    assert "| final_loss | 3.512 |" in md
    assert "⚑ vit_tiny_demo: 2 training setting(s) differ" in md
    assert "| train.lr_backbone | 0.0001 | recipe | – |" in md
    assert "| train.loss.roi_k | 4 ⚑ | recipe | 7 |" in md
    assert "| data.train | synthetic ⚑ | params | coco |" in md
    assert "- [hbird_synthetic](figures/hbird_synthetic.png)" in md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_under_clustering_is_flagged_in_the_table(paper_rows) -> None:  # type: ignore[no-untyped-def]
    e = collect(entry("overcluster", "ade20k", {
        "init": cluster({151: 0.2, 100: 0.15, 300: 0.3}, c=151)}), source="o.json")
    md = _render([e], paper_rows)
    header = next(line for line in md.splitlines() if line.startswith("| model | ADE20K K=151"))
    assert "K=100 ⚑ under-clustering (K < C)" in header
    assert "K=300 ⚑" not in header and "K=151 (GT) ⚑" not in header


def test_markdown_not_run_sections_and_capped_k(paper_rows) -> None:  # type: ignore[no-untyped-def]
    e = collect(entry("overcluster", "synthetic", {
        "init": cluster({7: 0.2, 28: 0.4}, c=7, cap={28: 20}, std=None)}), source="o.json")
    md = _render([e], paper_rows)
    assert "| model | synthetic K=7 (GT) | synthetic K=20 (K=28 capped) |" in md
    assert "| init (ours) | 20.0 [1]⚑ | 40.0 [1]⚑ |" in md  # std None: mean only
    assert "Capped K (fewer points than clusters): synthetic K=28→20." in md
    assert "Δ" not in md.split("## Linear")[0].split("## Clustering")[1]  # one model: no Δ
    lin = md.split("## Linear segmentation (like paper Table 2)\n\n")[1]
    assert lin.startswith("Not run (no metrics for this protocol).")
    assert "## In-context retrieval, Hummingbird, by memory fraction (like paper Figure 2)\n\n" \
           "Not run" in md


def test_unknown_protocol_is_reported_generically(paper_rows) -> None:  # type: ignore[no-untyped-def]
    e = collect(entry("depth", "synthetic", {"init": linear(0.1), "neco": linear(0.2)}),
                source="d.json")
    md = _render([e], paper_rows)
    assert "## Protocol `depth`" in md
    assert "no paper setting to compare" in md
    assert rollup([e], {"final_loss": 1.0}, train_source="s")["depth.synthetic.delta"] == 10.0


# ---------------------------------------------------------------------------- stage end to end

PARAMS_YAML = """\
eval:
  datasets: {synthetic: synthetic}
report:
  paper_settings_linear: ["input_size=448", "eval_mask_size=100", "model_selection=best_val"]
  paper_settings_overcluster: ["input_size=448"]
  paper_settings_hbird: ["input_size=504|512", "nn=scann"]
"""


def _write(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return path


def _stage_inputs(tmp: Path) -> list[str]:
    metrics = tmp / "reports" / "metrics"
    _write(metrics / "linear" / "synthetic.json",
           entry("linear", "synthetic", {"init": linear(0.3), "neco": linear(0.35)}))
    _write(metrics / "overcluster" / "synthetic.json", entry("overcluster", "synthetic", {
        "init": cluster({7: 0.2}, c=7), "neco": cluster({7: 0.25}, c=7)}))
    _write(metrics / "hbird" / "synthetic.json", entry("hbird", "synthetic", {
        "init": hbird({"1/1": 0.4}), "neco": hbird({"1/1": 0.45})}))
    # a stale file of a dataset no longer in eval.datasets: never rolled up
    _write(metrics / "linear" / "voc.json", entry("linear", "voc", {"init": linear(0.9)}))
    plots = tmp / "reports" / "train" / "plots" / "metrics"
    _write(plots / "train" / "loss.tsv", "timestamp\tstep\tloss\n1\t0\t4.0\n2\t1\t3.5\n")
    _write(plots / "train" / "lr.tsv", "step\tlr\n0\t0.1\n1\t0.05\n")
    _write(tmp / "reports" / "figures" / "linear_synthetic.png", "png")
    return [
        "--params", str(_write(tmp / "params.yaml", PARAMS_YAML)),
        "--metrics-dir", str(metrics),
        "--train-summary", str(_write(tmp / "reports" / "train" / "summary.json", SUMMARY)),
        "--train-plots", str(plots),
        "--resolved-config", str(_write(tmp / "models" / "neco" / "resolved_config.json",
                                        {"backbone": "vit_tiny_demo"})),
        "--paper", str(PAPER_CSV),
        "--pretrain-record", str(_write(tmp / "models" / "pretrain" / "pretrain.json",
                                        {"backbone": "vit_tiny_demo", "pretrained": False,
                                         "reason": "pretrain.steps=0: the seeded random init"})),
        "--pretrain-curve", str(_write(tmp / "reports" / "pretrain" / "loss.tsv", "step\tloss\n")),
        "--out-metrics", str(tmp / "reports" / "metrics.json"),
        "--out-tables", str(tmp / "reports" / "tables.md"),
        "--out-figures", str(tmp / "reports" / "figures"),
    ]


def test_stage_main_end_to_end_is_deterministic(tmp_path: Path) -> None:
    from stages import report as stage  # needs neco.config (the lead's loader)
    argv = _stage_inputs(tmp_path)
    stage.main(argv)
    reports = tmp_path / "reports"
    first = [(reports / n).read_bytes() for n in
             ("metrics.json", "tables.md", "figures/training_loss.png")]
    metrics = json.loads(first[0])
    assert metrics["linear.synthetic.delta"] == 5.0 and metrics["train.steps"] == 12
    assert "voc" not in json.dumps(metrics)  # the stale file is not read
    tables = first[1].decode()
    assert "](figures/training_loss.png)" in tables and "](figures/linear_synthetic.png)" in tables
    assert first[2].startswith(b"\x89PNG")
    stage.main(argv)
    assert first == [(reports / n).read_bytes() for n in
                     ("metrics.json", "tables.md", "figures/training_loss.png")]


@pytest.mark.parametrize("flag", ["--train-summary", "--resolved-config", "--metrics-dir",
                                  "--train-plots", "--paper", "--pretrain-record",
                                  "--pretrain-curve"])
def test_stage_missing_input_names_the_path(tmp_path: Path, flag: str) -> None:
    from stages import report as stage  # needs neco.config (the lead's loader)
    argv = _stage_inputs(tmp_path)
    missing = str(tmp_path / "missing" / "thing")
    argv[argv.index(flag) + 1] = missing
    with pytest.raises(FileNotFoundError, match=missing):
        stage.main(argv)


def test_load_metrics_rejects_misplaced_file(tmp_path: Path) -> None:
    _write(tmp_path / "linear" / "voc.json", entry("hbird", "voc", {"neco": hbird({"1/1": 0.5})}))
    with pytest.raises(ReportInputError, match=r"linear/voc\.json: protocol: 'hbird' does not"):
        load_metrics(tmp_path, datasets=["voc"], protocols=["linear"])
    _write(tmp_path / "linear" / "voc.json", "{not json")
    with pytest.raises(ReportInputError, match=r"voc\.json: invalid JSON"):
        load_metrics(tmp_path, datasets=["voc"], protocols=["linear"])


def test_load_metrics_reads_exactly_the_declared_files(tmp_path: Path) -> None:
    """Stale files of undeclared datasets are ignored; a declared file that is missing fails."""
    _write(tmp_path / "linear" / "voc.json", entry("linear", "voc", {"init": linear(0.3)}))
    _write(tmp_path / "linear" / "ade20k.json", entry("linear", "ade20k", {"init": linear(0.2)}))
    got = load_metrics(tmp_path, datasets=["voc"], protocols=["linear"])
    assert [(e.protocol, e.dataset) for e in got] == [("linear", "voc")]
    with pytest.raises(FileNotFoundError, match=r"hbird/voc\.json.*eval_hbird@voc"):
        load_metrics(tmp_path, datasets=["voc"], protocols=["linear", "hbird"])


def test_k_equals_c_is_found_by_class_count(paper_rows) -> None:  # type: ignore[no-untyped-def]
    res = cluster({100: 0.1, 151: 0.2, 300: 0.3}, c=151)
    res["class_names"] = [f"c{i}" for i in range(151)]
    md = _render([collect(entry("overcluster", "ade20k", {"neco": res}), source="a.json")],
                 paper_rows)
    assert ("| model | ADE20K K=151 (GT) | ADE20K K=100 ⚑ under-clustering (K < C) "
            "| ADE20K K=300 |") in md


# ------------------------------------------------- contract with neco.evals.results.to_dict()


def _real_results() -> dict[str, dict[str, Any]]:
    """One of each protocol result, built with the eval helpers' dataclasses."""
    np = pytest.importorskip("numpy")
    res = pytest.importorskip("neco.evals.results")
    conf, common = np.eye(2, dtype=np.int64), {"device": "cpu", "runtime_s": 1.0}
    lin = res.LinearResult(
        miou=0.5, miou_best_val=0.5, miou_last=0.4, best_epoch=1, iou_per_class=(0.5, 0.5),
        variants={"identity": 0.5}, confusion=conf, mapping=(0, 1), curve=(), eval_mask_size=28,
        class_names=("a", "b"), settings={"input_size": 112}, fingerprint="lin", seed=400,
        n_images=2, n_pixels=8, head_best_val={}, head_last={}, examples=(), **common)
    k = res.ClusterKResult(
        k_requested=2, k_used=2, capped=False, under_clustering=False, matching="hungarian",
        seeds=(0,),
        miou_per_seed=(0.3,), mean=0.3, std=None, objective_per_seed=(1.0,),
        iou_per_class_mean=(0.3, 0.3), variants={}, n_kmeans_train_points=10,
        confusion_per_seed=(conf,), mapping_per_seed=((0, 1),))
    clu = res.ClusterResult(
        miou=0.3, iou_per_class=(0.3, 0.3), variants={}, confusion=conf, mapping=(0, 1),
        results=(k,), pca_dim_used=2, n_pca_train_points=10, class_names=("a", "b"),
        settings={"input_size": 112}, fingerprint="clu", seed=(0,), n_points=10, n_images=2,
        n_pixels=8, examples=(), **common)
    run = res.HbirdRun(
        fraction="1/1", subset_seed=42, miou=0.6, variants={}, iou_per_class=(0.6, 0.6),
        confusion=conf, mapping=(0, 1), memory_rows=10, per_view_k="all", n_memory_images=2,
        derived_subset=False, recall_at_k=None, n_pixels=8, timings_s={})
    hb = res.HbirdResult(
        miou=0.6, results=(res.HbirdFraction("1/1", 0.6, None, (run,)),),
        class_names=("a", "b"), settings={"input_size": 112}, fingerprint="hb",
        nn_backend="exact", recall_at_k=None, seed=42, n_images=2, examples=(), **common)
    return {"linear": lin.to_dict(), "overcluster": clu.to_dict(), "hbird": hb.to_dict()}


def test_real_result_dicts_roll_up(paper_rows) -> None:  # type: ignore[no-untyped-def]
    dicts = json.loads(json.dumps(_real_results()))  # as read back from the eval stage's JSON
    entries = [collect(entry(p, "synthetic", {"init": d, "neco": d}), source=f"{p}.json")
               for p, d in dicts.items()]
    got = rollup(entries, {"final_loss": 1.0}, train_source="s")
    assert got["linear.synthetic.neco.miou"] == 50.0
    assert got["overcluster.synthetic.neco.k2.miou"] == 30.0
    assert got["hbird.synthetic.neco.f1_1.miou"] == 60.0
    assert got["hbird.synthetic.delta"] == 0.0
    assert "synthetic K=2 (GT)" in _render(entries, paper_rows)


def test_training_deviations_flag_the_trained_model_only(paper_rows) -> None:  # type: ignore[no-untyped-def]
    """A NeCo model trained off the paper recipe is flagged even when its evaluation settings
    match the paper's; the init (not trained here) is not."""
    training = {"deviations": {"train.loss.roi_k": {"value": 4, "paper": 7},
                               "train.batch_size": {"value": 16, "paper": 64}},
                "summary_order": ["train.loss.roi_k", "train.batch_size"]}
    neco = {**linear(0.5, settings=PAPER_LINEAR), "provenance": {"training": training}}
    init = {**linear(0.4, settings=PAPER_LINEAR), "provenance": {"training": None}}
    e = collect(entry("linear", "voc", {"init": init, "neco": neco}), source="l.json")
    cfg = ReportConfig(paper_settings_linear=["input_size=448", "eval_mask_size=100"],
                       paper_settings_overcluster=[], paper_settings_hbird=[])
    from neco.report.settings import Notes, training_differences

    notes = Notes(cfg)
    assert notes.mark(e, "init") == " [1]"
    assert notes.mark(e, "neco") == " [2]⚑"
    assert training_differences(neco) == ["training train.loss.roi_k=4 (paper 7)",
                                          "training train.batch_size=16 (paper 64)"]
    text = "\n".join(notes.render())
    assert "[1] linear (VOC init): `linear[S112]`; matches the paper setting" in text
    assert ("⚑ differs from the paper setting: training train.loss.roi_k=4 (paper 7); "
            "training train.batch_size=16 (paper 64)") in text


def test_stage_without_training_curves_when_no_step_was_run(tmp_path: Path) -> None:
    """`train.max_steps=0` (evaluate a released checkpoint) logs no curves: the report still
    runs and says so; a run with steps but without curves is an error naming the folder."""
    from stages import report as stage

    argv = _stage_inputs(tmp_path)
    plots = argv[argv.index("--train-plots") + 1]
    argv[argv.index("--train-plots") + 1] = str(tmp_path / "no-plots")
    with pytest.raises(FileNotFoundError, match="no-plots.*12 steps"):
        stage.main(argv)
    summary = Path(argv[argv.index("--train-summary") + 1])
    _write(summary, {"steps": 0, "final_loss": None, "initial_loss": None,
                     "backbone": "vit_tiny_demo"})
    stage.main(argv)
    png = tmp_path / "reports" / "figures" / "training_loss.png"
    assert png.read_bytes().startswith(b"\x89PNG") and Path(plots).is_dir()
