"""The RNN and LSTM loops against PyTorch's modules, attention in one product, and the measurements."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.rnn import (
    expected_gpu_attention,
    layer_multiply_adds,
    attention_forward,
    gradient_reach,
    lstm_forward,
    lstm_weights_from_torch,
    reach_curves,
    rnn_forward,
    rnn_step,
    rnn_weights_from_torch,
    sequential_steps,
    time_sequence_models,
    time_training_step,
)
from course.seed import seed_everything


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


def test_rnn_loop_matches_torch_nn_rnn_with_the_same_weights():
    rnn = nn.RNN(5, 7, batch_first=True, nonlinearity="tanh")
    x = torch.randn(3, 11, 5)
    theirs, h_n = rnn(x)
    ours = rnn_forward(x, *rnn_weights_from_torch(rnn))
    assert ours.shape == (3, 11, 7)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)  # float32
    torch.testing.assert_close(ours[:, -1], h_n[0], atol=1e-6, rtol=1e-5)


def test_rnn_loop_accepts_an_unbatched_sequence_and_an_initial_state():
    rnn = nn.RNN(4, 6, batch_first=True)
    x, h0 = torch.randn(9, 4), torch.randn(1, 6)
    theirs, _ = rnn(x.unsqueeze(0), h0.unsqueeze(0))
    ours_unbatched = rnn_forward(x, *rnn_weights_from_torch(rnn))
    assert ours_unbatched.shape == (9, 6)
    ours = rnn_forward(x.unsqueeze(0), *rnn_weights_from_torch(rnn), h0=h0)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)  # float32


def test_rnn_step_is_one_step_of_the_loop():
    W_xh, W_hh, b = torch.randn(3, 4), torch.randn(4, 4), torch.randn(4)
    x = torch.randn(2, 1, 3)
    torch.testing.assert_close(rnn_step(x[:, 0], torch.zeros(2, 4), W_xh, W_hh, b),
                               rnn_forward(x, W_xh, W_hh, b)[:, 0], atol=0.0, rtol=0.0)  # same ops: exact


def test_rnn_step_names_the_shapes_when_they_do_not_fit():
    with pytest.raises(ValueError, match=r"W_xh \(3, 4\)"):
        rnn_step(torch.randn(2, 5), torch.randn(2, 4), torch.randn(3, 4), torch.randn(4, 4), torch.randn(4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        rnn_forward(torch.randn(2, 3, 4, 5), torch.randn(5, 4), torch.randn(4, 4), torch.randn(4))


def test_lstm_loop_matches_torch_nn_lstm_with_the_same_weights():
    lstm = nn.LSTM(5, 6, batch_first=True)
    x = torch.randn(2, 13, 5)
    theirs, _ = lstm(x)
    ours = lstm_forward(x, *lstm_weights_from_torch(lstm))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)  # float32


def test_weight_conversion_rejects_modules_it_cannot_map():
    with pytest.raises(ValueError, match="one-layer"):
        rnn_weights_from_torch(nn.RNN(3, 3, num_layers=2))
    with pytest.raises(ValueError, match="one-layer"):
        lstm_weights_from_torch(nn.LSTM(3, 3, bidirectional=True))


def test_attention_forward_matches_torch_scaled_dot_product_attention():
    x = torch.randn(2, 9, 8)
    W_q, W_k, W_v = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 5)
    theirs = F.scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v)
    torch.testing.assert_close(attention_forward(x, W_q, W_k, W_v), theirs, atol=1e-5, rtol=1e-5)  # float32


def test_attention_forward_matches_the_course_attention_module():
    attention = pytest.importorskip("course.attention")
    x = torch.randn(9, 8)
    W = [torch.randn(8, 8) / math.sqrt(8) for _ in range(3)]
    theirs, _ = attention.scaled_dot_product_attention(x @ W[0], x @ W[1], x @ W[2])
    torch.testing.assert_close(attention_forward(x, *W), theirs, atol=1e-6, rtol=1e-5)  # float32


def test_attention_forward_names_the_shapes_when_they_do_not_fit():
    with pytest.raises(ValueError, match=r"x \(4, 3\)"):
        attention_forward(torch.randn(4, 3), torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2))


@pytest.mark.parametrize("kind, n, layers, steps", [("rnn", 100, 1, 100), ("rnn", 100, 4, 103),
                                                    ("attention", 100, 4, 4), ("attention", 1, 1, 1)])
def test_sequential_steps_is_the_critical_path(kind, n, layers, steps):
    assert sequential_steps(kind, n, layers) == steps


def test_sequential_steps_rejects_unknown_kinds_and_lengths():
    with pytest.raises(ValueError, match="'lstm'"):
        sequential_steps("lstm", 3)
    with pytest.raises(ValueError, match="at least 1"):
        sequential_steps("rnn", 0)


@pytest.mark.parametrize("n, d", [(16, 8), (40, 12)])
def test_multiply_add_counts_equal_what_pytorch_flop_counter_counts(n, d):
    """Reference: torch.utils.flop_counter counts 2 FLOPs per multiply-add of every matrix product it sees."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, n, d)
    W, b = torch.randn(d, d), torch.zeros(d)
    runs = {"rnn": lambda: rnn_forward(x, W, W, b),
            "lstm": lambda: lstm_forward(x, torch.randn(d, 4 * d), torch.randn(d, 4 * d), torch.zeros(4 * d)),
            "attention": lambda: attention_forward(x, W, W, W)}
    for kind, run in runs.items():
        with FlopCounterMode(display=False) as counter:
            run()
        assert counter.get_total_flops() == 2 * layer_multiply_adds(kind, n, d), kind


def test_attention_products_are_counted_the_way_lesson_11_counts_them():
    from course.efficient import attention_flops

    for n, d in [(1024, 64), (4096, 64), (7, 3)]:
        products = layer_multiply_adds("attention", n, d) - 3 * n * d * d       # minus the Q, K, V projections
        assert products == 2 * n * n * d                                        # n^2 d multiply-adds per product
        assert 2 * products == attention_flops(1, 1, n, d)                      # 2 n^2 d FLOPs per product


def test_multiply_add_counts_name_bad_input():
    with pytest.raises(ValueError, match="kind must be one of"):
        layer_multiply_adds("gru", 4, 4)
    with pytest.raises(ValueError, match="n must be a whole number >= 1, got 0"):
        layer_multiply_adds("rnn", 0, 4)


def test_expected_gpu_figure_is_the_labelled_quote_without_a_reference(monkeypatch):
    from course import sdpa_bench

    monkeypatch.setattr(sdpa_bench, "load_reference", lambda *a, **k: None)
    got = expected_gpu_attention()
    naive = next(r for r in sdpa_bench.QUOTED_H100["rows"] if r["backend"] == "naive")
    assert (got["ms"], got["tflops"]) == (naive["ms"], naive["tflops"])
    assert "not measured by this course" in got["source"] and got["config"] == sdpa_bench.QUOTED_H100["config"]
    from course.efficient import attention_flops
    assert got["flops"] == attention_flops(4, 16, 4096, 128)                   # the quoted configuration's size
    assert got["flops"] / 1e12 / (got["ms"] * 1e-3) == pytest.approx(got["tflops"], rel=0.05)  # consistent quote


def test_expected_gpu_figure_comes_from_the_reference_table_when_one_is_kept(monkeypatch, tmp_path):
    from course import sdpa_bench

    naive = sdpa_bench.Entry("naive", "bfloat16", False, 4096, 128, batch=4, heads=16)
    flash = sdpa_bench.Entry("flash", "bfloat16", False, 4096, 128, batch=4, heads=16)
    rows = [sdpa_bench.Result(flash, sdpa_bench.OK, ms=1.0, tflops=500.0),
            sdpa_bench.Result(naive, sdpa_bench.OK, ms=11.0, tflops=50.0)]
    path = sdpa_bench.save_table(rows, tmp_path / "ref.json", device="cpu")
    monkeypatch.setattr(sdpa_bench, "load_reference", lambda *a, **k: sdpa_bench.load_table(path))
    got = expected_gpu_attention()
    assert (got["ms"], got["tflops"], got["flops"]) == (11.0, 50.0, naive.flops)
    assert got["source"].startswith("measured by this course on") and "batch 4, 16 heads" in got["config"]


def test_gradient_reach_matches_the_jacobian_computed_by_torch():
    W = torch.randn(3, 3, dtype=torch.float64)

    def fn(x):
        return torch.tanh(x.cumsum(0) @ W)

    x = torch.randn(6, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: fn(x)[-1].sum(), x)  # [6, 3]
    torch.testing.assert_close(gradient_reach(fn, x), jac.norm(dim=-1), atol=1e-12, rtol=1e-10)  # float64


def test_gradient_reach_is_zero_before_the_input_a_causal_model_sees():
    reach = gradient_reach(lambda x: x * 2.0, torch.randn(5, 2))
    assert torch.all(reach[:-1] == 0) and reach[-1] > 0


def test_rnn_gradient_fades_with_distance_and_attention_does_not():
    curves = reach_curves(seq_len=120, d_model=16)
    assert set(curves) == {"RNN", "LSTM", "attention"}
    rnn, attn = curves["RNN"], curves["attention"]
    assert rnn.shape == attn.shape == (120,)
    assert rnn[100] < 1e-12 * rnn[0]  # the RNN's gradient has all but vanished 100 steps back
    assert attn[100] > 1e-3 * attn[0]  # attention's is of the same order at every distance
    assert torch.all(torch.isfinite(rnn)) and torch.all(rnn[100:] > 0)  # float64 resolves it, no underflow


def test_reach_curves_are_deterministic():
    a, b = reach_curves(50, 8), reach_curves(50, 8)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_timing_returns_one_row_per_length_and_model():
    rows = time_sequence_models([4, 8], d_model=8, min_run_time=0.01)
    assert len(rows) == 8
    assert {r["length"] for r in rows} == {4, 8}
    assert all(r["ms"] > 0 for r in rows)


def test_training_step_timing_covers_the_three_models():
    times = time_training_step(8, d_model=8, min_run_time=0.01)
    assert len(times) == 3 and all(ms > 0 for ms in times.values())


def test_a_model_the_device_cannot_run_is_reported_not_raised(monkeypatch):
    import course.rnn as crnn

    real = crnn._timed_models

    def with_a_broken_model(d_model, device, seed=0):
        models = real(d_model, device, seed)

        def broken(x):
            raise NotImplementedError("aten::rnn_tanh is not implemented for this device")

        models["nn.RNN (PyTorch's loop)"] = broken
        return models

    monkeypatch.setattr(crnn, "_timed_models", with_a_broken_model)
    rows = crnn.time_sequence_models([4], d_model=8, min_run_time=0.01)
    broken = [r for r in rows if r["model"] == "nn.RNN (PyTorch's loop)"][0]
    assert math.isnan(broken["ms"]) and "not implemented" in broken["error"]
    assert all(r["ms"] > 0 for r in rows if r is not broken)
