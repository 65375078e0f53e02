"""utils/record_scaling.py: the maintainer script that records lesson 13's reference sweep. Run here in its
--quick form (a few steps per run), which checks the script and the file it writes, not the science."""
from __future__ import annotations

import json

import pytest

from course import scaling as sc
from utils import record_scaling


def test_the_plan_spans_thirty_fold_and_shares_the_lessons_recipe():
    plan = record_scaling.plan()
    sizes = {size for size, _ in plan["params_sweep"]}
    params = [sc.non_embedding_formula(s.num_layers, s.d_model) for s in sizes]
    assert len(sizes) >= 6 and max(params) / min(params) >= 30
    assert all(steps == sc.LMRecipe().steps for _, steps in plan["params_sweep"])
    assert set(sc.LIVE_SIZES) <= sizes and {s for s, _ in plan["emergence"]} >= set(sc.LIVE_EMERGENCE_SIZES)
    for size, steps in plan["isoflop"]:          # every run of the profile spends the same 6 N D, to 2%
        n = sc.non_embedding_formula(size.num_layers, size.d_model)
        assert abs(sc.six_n_d(n, plan["lm_recipe"].tokens(steps)) / plan["isoflop_budget"] - 1) < 0.02


def test_a_quick_recording_writes_a_complete_file_the_lesson_can_read(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert record_scaling.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    ref = sc.load_reference(out)
    assert ref["complete"] and ref["command"].startswith("python utils/record_scaling.py --quick")
    assert ref["machine"]["cores"] >= 1 and ref["machine"]["torch"] and ref["date"]
    assert ref["duration_s"] > 0 and len(ref["params_sweep"]) == 3 and len(ref["emergence"]) == 2
    shared = {(r.size, r.steps): r.val_loss for r in ref["params_sweep"]}
    for run in ref["data_sweep"] + ref["isoflop"]:           # a run two sections share is trained once
        if (run.size, run.steps) in shared:
            assert run.val_loss == shared[(run.size, run.steps)]
    assert "wrote sweep.json" in capsys.readouterr().out


def test_an_interrupted_recording_leaves_a_file_marked_incomplete(tmp_path, monkeypatch, capsys):
    calls = []

    def train_lm(size, data, recipe, steps=None):
        calls.append(size)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return sc.RunResult(size.name, size.num_layers, size.d_model, 1000, 1, 10, 3.0)

    monkeypatch.setattr(record_scaling.sc, "train_lm", train_lm)
    out = tmp_path / "half.json"
    assert record_scaling.main(["--quick", "--threads", "1", "--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and "interrupted during run 2" in doc["stopped"]
    assert len(doc["params_sweep"]) == 1
    with pytest.raises(sc.ReferenceProblem, match="incomplete"):
        sc.load_reference(out)
    assert "marked incomplete" in capsys.readouterr().out


def test_quick_mode_refuses_to_overwrite_the_reference(capsys):
    assert record_scaling.main(["--quick"]) == 2
    assert "give --out" in capsys.readouterr().out
