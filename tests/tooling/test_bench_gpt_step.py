"""The GPT training-step benchmark runs and reports (its timing is not tested: that is the bench's job)."""
from __future__ import annotations

import torch

from utils.bench_gpt_step import ReferenceGPT, main

TINY = ["--layers", "1", "--d-model", "16", "--heads", "2", "--context", "8", "--batch", "2", "--vocab", "11",
        "--repeats", "1", "--steps", "1"]


def test_reference_gpt_gives_logits_and_is_causal():
    torch.manual_seed(0)
    ref = ReferenceGPT(11, 8, 16, 2, 1).eval()
    idx = torch.randint(11, (2, 8))
    logits = ref(idx)
    assert logits.shape == (2, 8, 11)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    torch.testing.assert_close(ref(changed)[:, :-1], logits[:, :-1])  # the last token changes no earlier logit


def test_bench_prints_both_times_and_the_ratio_against_the_target(capsys):
    assert main([*TINY, "--target", "1000"]) == 0
    out = capsys.readouterr().out
    assert "course GPT" in out and "torch reference" in out and "target <= 1000.00: ok" in out
    assert main([*TINY, "--target", "0.0001"]) == 1
