"""Versioned eval outputs depend on params and inputs only: no temp names, no wall times."""

from __future__ import annotations

from pathlib import Path

import torch

from neco.evals.cache import load_features, save_features
from neco.evals.results import split_timings


def test_features_file_bytes_do_not_depend_on_the_temp_name(tmp_path: Path) -> None:
    """torch.save names its zip records after the file; saving to a temp path embedded it."""
    tokens = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    meta = {"input_size": 8, "model": "init"}
    a, b = tmp_path / "a" / "init.pt", tmp_path / "b" / "init.pt"
    save_features(a, tokens=tokens, ids=["x", "y", "z"], meta=meta)
    save_features(b, tokens=tokens, ids=["x", "y", "z"], meta=meta)
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(load_features(a, ids=["x", "y", "z"], input_size=8), tokens)


def test_split_timings_moves_every_wall_time_out_and_keeps_the_rest() -> None:
    record = {
        "init": {"miou": 0.5, "runtime_s": 1.2, "results": [
            {"fraction": "1/1", "runs": [{"miou": 0.5, "timings_s": {"memory": 0.3}}]},
        ]},
        "neco": {"miou": 0.6, "runtime_s": 2.0},
    }
    kept, timed = split_timings(record)
    assert kept == {
        "init": {"miou": 0.5, "results": [{"fraction": "1/1", "runs": [{"miou": 0.5}]}]},
        "neco": {"miou": 0.6},
    }
    assert timed["init"]["runtime_s"] == 1.2 and timed["neco"] == {"runtime_s": 2.0}
    assert timed["init"]["results"][0]["runs"][0]["timings_s"] == {"memory": 0.3}
