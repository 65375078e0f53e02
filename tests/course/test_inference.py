"""Lesson 17's pieces against references: batched generation against each prompt alone and against Hugging Face's
GPT-2 with the same weights; int8 codes against PyTorch's quantizers; the distillation loss against ``F.kl_div``;
the MoE layer against a token-by-token loop; speculative decoding against the target's greedy output."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course import inference as inf
from course.efficient import greedy_decode
from course.layers import FeedForward
from course.models.gpt import GPT, GPTConfig


def small_gpt(d_model=32, layers=2, vocab=23, seed=0, context=48) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, context_length=context, d_model=d_model, num_heads=4, num_layers=layers))
    with torch.no_grad():   # larger weights than the initialisation, so greedy choices differ between prompts
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model.eval()


# ----------------------------------------------------------------------------------------------- batching

def test_left_padded_batch_gives_each_prompt_its_own_greedy_answer():
    model = small_gpt()
    rows = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [5]]
    ids, mask = inf.pad_prompts(rows, pad_id=0)
    batched = inf.batched_generate(model, ids, 10, attention_mask=mask)
    for row, got in zip(rows, batched):
        alone = greedy_decode(model, torch.tensor([row]), 10, use_cache=False)[0, len(row):]
        assert got.tolist() == alone.tolist()


def test_padded_forward_matches_the_plain_forward_on_real_positions():
    model = small_gpt()
    ids, mask = inf.pad_prompts([[3, 4, 5, 6], [7, 8]], pad_id=0)
    logits = inf.gpt_forward_padded(model, ids, mask)
    torch.testing.assert_close(logits[1, 2:], model(torch.tensor([[7, 8]]))[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0], model(torch.tensor([[3, 4, 5, 6]]))[0], atol=1e-5, rtol=1e-5)


def test_batched_generate_equals_hugging_face_gpt2_left_padded(tmp_path):
    transformers = pytest.importorskip("transformers")
    from course.serving import export_gpt2

    model = small_gpt(vocab=30)
    folder = export_gpt2(model, tmp_path / "gpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    rows = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    ids, mask = inf.pad_prompts(rows, pad_id=0)
    ours = inf.batched_generate(model, ids, 8, attention_mask=mask)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert ours.tolist() == theirs[:, ids.shape[1]:].tolist()


def test_right_padding_changes_the_answer_and_is_refused():
    model = small_gpt()
    ids, mask = inf.pad_prompts([[1, 2, 3, 4], [5, 6]], pad_id=0, side="right")
    assert mask[1].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="pad on the LEFT"):
        inf.batched_generate(model, ids, 3, attention_mask=mask)


def test_prompts_of_different_lengths_without_a_mask_get_one_line():
    with pytest.raises(ValueError, match=r"different lengths \(2, 3 tokens\) and no attention mask"):
        inf.batched_generate(small_gpt(), [[1, 2, 3], [4, 5]], 3)


def test_throughput_rows_count_tokens_per_second():
    row = inf.ThroughputRow(batch=4, seconds=0.5, new_tokens=10)
    assert row.tokens_per_s == 80 and row.latency_ms_per_token == 50


# ------------------------------------------------------------------------------------------- quantization

def test_absmax_codes_equal_torch_quantize_per_tensor_and_per_channel():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 24, generator=g) * torch.linspace(0.1, 3, 16)[:, None]
    q, scale = inf.absmax_quantize(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.quantize_per_tensor(w, float(scale), 0, torch.qint8).int_repr()
        qc, sc = inf.absmax_quantize(w, dim=0)
        theirs_c = torch.quantize_per_channel(w, sc[:, 0].double(), torch.zeros(16, dtype=torch.long), 0,
                                              torch.qint8).int_repr()
    assert torch.equal(q, theirs) and torch.equal(qc, theirs_c)
    assert int(q.abs().max()) == 127 and bool((qc.abs().amax(dim=1) == 127).all())


def test_zeropoint_codes_equal_torch_and_map_zero_exactly():
    x = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 5 - 1      # lopsided: -1..4
    q, scale, zp = inf.zeropoint_quantize(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.quantize_per_tensor(x, float(scale), int(zp), torch.qint8).int_repr()
    assert torch.equal(q, theirs)
    assert int(q.min()) == -128 and int(q.max()) == 127
    assert float(inf.dequantize(torch.tensor(int(zp), dtype=torch.int8), scale, zp)) == 0.0


def test_per_channel_error_is_smaller_than_per_tensor_with_uneven_rows():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 64, generator=g) * torch.logspace(-2, 1, 32)[:, None]
    assert inf.quantization_error(w, dim=0) < inf.quantization_error(w) / 3
    assert inf.quantization_error(w.abs(), "zeropoint") < inf.quantization_error(w.abs(), "absmax")


@pytest.mark.parametrize("bad, words", [(torch.tensor([1.0, float("nan")]), "NaN or inf"),
                                        (torch.tensor([1.0, float("inf")]), "NaN or inf"),
                                        (torch.zeros(3, 4), "all zeros"),
                                        (torch.ones(3, dtype=torch.long), "floating-point")])
def test_quantizing_a_tensor_that_has_no_int8_scale_gets_one_line(bad, words):
    for fn in (inf.absmax_quantize, inf.zeropoint_quantize):
        with pytest.raises(ValueError, match=words):
            fn(bad)


def test_int8_linear_equals_a_linear_with_the_dequantized_weight_and_torchs_kernel():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    layer = inf.Int8Linear.from_linear(linear)
    x = torch.randn(3, 5, 48)
    want = F.linear(x, layer.dequantized_weight(), linear.bias)
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    assert (layer.dequantized_weight() - linear.weight).abs().max() <= layer.scale.max() / 2 + 1e-7
    if inf.int8_kernel_available():
        fast = inf.Int8Linear.from_linear(linear, kernel="int8")
        torch.testing.assert_close(fast(x), want, atol=1e-4, rtol=1e-4)


def test_quantized_gpt_is_four_times_smaller_in_its_linears_and_close_in_output():
    model = small_gpt(d_model=64, layers=2)
    before = inf.tensor_bytes(model)
    linear_bytes = sum(m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n)
    x = torch.randint(0, 23, (2, 16))
    want = model(x)
    inf.quantize_linears(model)
    saved = linear_bytes - sum(m.weight_int8.numel() + m.scale.numel() * 4 for m in model.modules()
                               if isinstance(m, inf.Int8Linear))
    assert before - inf.tensor_bytes(model) == saved
    assert inf.saved_bytes(model) < before
    assert (model(x) - want).abs().max() < 0.05 * want.abs().max()


def test_int8_linear_agrees_with_pytorchs_dynamic_quantization():
    quantize_dynamic = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize_dynamic is None or not hasattr(quantize_dynamic, "quantize_dynamic"):
        pytest.skip("this PyTorch has no torch.ao.quantization.quantize_dynamic")
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantize_dynamic.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)(x)
    ours = inf.Int8Linear.from_linear(layer[0])(x)
    exact = layer(x)
    # both approximate the float layer to about 1% of its range (theirs also quantizes the inputs)
    assert (ours - exact).abs().max() < 0.01 * exact.abs().max()
    assert (theirs - exact).abs().max() < 0.03 * exact.abs().max()


def test_llm_int8_keeps_outlier_features_in_float_and_beats_plain_int8():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, generator=g)
    x[:, 7] *= 60                                                           # one outlier feature
    w = torch.randn(32, 64, generator=g) * 0.1
    exact = x @ w.T
    mixed, cols = inf.llm_int8_matmul(x, w, threshold=6.0)
    assert cols.tolist() == [7]
    plain = inf.int8_matmul(x, w)
    assert (mixed - exact).abs().mean() < (plain - exact).abs().mean() / 5
    torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.05)
    torch.testing.assert_close(inf.llm_int8_matmul(x / 100, w)[0], inf.int8_matmul(x / 100, w))


# ------------------------------------------------------------------------------------------- distillation

def test_distillation_loss_equals_kl_div_and_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g) * 3
    y = torch.randint(0, 11, (2, 5), generator=g)
    T, a = 3.0, 0.7
    kl = F.kl_div(F.log_softmax(s.reshape(-1, 11) / T, -1), F.log_softmax(t.reshape(-1, 11) / T, -1),
                  log_target=True, reduction="batchmean")
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    torch.testing.assert_close(inf.distillation_loss(s, t, y, T, a), want)
    torch.testing.assert_close(inf.distillation_loss(s, t, y, T, 0.0), F.cross_entropy(s.reshape(-1, 11), y.reshape(-1)))


def test_distillation_loss_sends_no_gradient_to_the_teacher_and_refuses_other_vocabularies():
    s, t = torch.randn(4, 7, requires_grad=True), torch.randn(4, 7, requires_grad=True)
    inf.distillation_loss(s, t, torch.zeros(4, dtype=torch.long)).backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="one shape"):
        inf.distillation_loss(torch.randn(4, 7), torch.randn(4, 9), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------------- mixture of experts

def test_top_k_routing_renormalises_the_k_largest_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.0, 3.0], [0.0, 0.5, 5.0, -1.0]])
    w, e = inf.top_k_routing(logits, 2)
    assert e.tolist() == [[3, 0], [2, 1]]
    p = logits.softmax(-1)
    torch.testing.assert_close(w[0], p[0, [3, 0]] / p[0, [3, 0]].sum())
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_a_router_k_above_the_number_of_experts_gets_one_line():
    with pytest.raises(ValueError, match=r"k must be an integer in 1..4, got 5"):
        inf.top_k_routing(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match=r"k of 4 experts"):
        inf.MoEFeedForward(8, 16, 4, k=5)


def _one_token_at_a_time(moe: inf.MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The reference for ``x [batch, seq, d]``, one token at a time: its top-k experts' outputs weighted by their
    router probabilities, renormalised over the k chosen (k > 1), or the raw probability (k = 1, Switch)."""
    want = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            p = moe.router(x[b, t]).softmax(-1)
            top, idx = p.topk(moe.k)
            weights = top / top.sum() if moe.k > 1 else top
            for weight, e in zip(weights, idx.tolist()):
                want[b, t] += weight * moe.experts[e](x[b, t])
    return want


def test_moe_layer_equals_a_token_by_token_loop():
    torch.manual_seed(0)
    moe = inf.MoEFeedForward(12, 20, n_experts=5, k=2)
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(moe(x), _one_token_at_a_time(moe, x), atol=1e-6, rtol=1e-5)
    assert int(moe.counts.sum()) == 2 * 7 * 2


def test_top_1_moe_scales_by_the_raw_router_probability_so_the_router_learns_from_the_loss():
    """Switch's rule: renormalised over one expert the weight would be 1 and the router's gradient zero."""
    torch.manual_seed(0)
    moe = inf.MoEFeedForward(12, 20, n_experts=4, k=1)
    x = torch.randn(2, 7, 12)
    out = moe(x)
    torch.testing.assert_close(out, _one_token_at_a_time(moe, x), atol=1e-6, rtol=1e-5)
    out.square().sum().backward()
    assert moe.router.weight.grad.abs().max() > 1e-3


def test_one_expert_moe_is_its_feed_forward():
    torch.manual_seed(0)
    moe = inf.MoEFeedForward(8, 16, n_experts=1, k=1)
    x = torch.randn(3, 8)
    torch.testing.assert_close(moe(x), moe.experts[0](x))
    assert isinstance(moe.experts[0], FeedForward)


def test_load_balancing_loss_is_one_when_even_and_n_when_collapsed():
    n = 4
    even_p = torch.full((8, n), 1 / n)
    even_e = torch.arange(8)[:, None] % n
    assert float(inf.load_balancing_loss(even_p, even_e, n)) == pytest.approx(1.0)
    collapsed_p = torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1)
    assert float(inf.load_balancing_loss(collapsed_p, torch.zeros(8, 1, dtype=torch.long), n)) == pytest.approx(n)


def test_moe_gpt_trains_and_reports_usage():
    model = inf.moe_gpt(small_gpt(), n_experts=4, k=1, d_ff=32)
    x = torch.randint(0, 23, (2, 10))
    loss = model(x).logsumexp(-1).mean() + 0.01 * inf.moe_aux_loss(model)
    loss.backward()
    usage = inf.expert_usage(model, x)
    assert usage.shape == (2, 4)
    torch.testing.assert_close(usage.sum(-1), torch.ones(2))


# ------------------------------------------------------------------------------------ speculative decoding

@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_output_is_the_targets_greedy_output(k):
    target, draft = small_gpt(d_model=48, seed=0, context=64), small_gpt(d_model=16, layers=1, seed=1, context=64)
    for prompt in ([3], [1, 2, 3, 4, 5]):
        p = torch.tensor(prompt)
        want = greedy_decode(target, p[None], 20)[0]
        got = inf.speculative_generate(target, draft, p, 20, k=k)
        assert got.tokens.tolist() == want.tolist()
        assert 0 <= got.accepted <= got.proposed


def test_a_draft_identical_to_the_target_has_every_proposal_accepted():
    target = small_gpt()
    out = inf.speculative_generate(target, target, torch.tensor([1, 2]), 15, k=4)
    assert out.acceptance_rate == 1.0 and out.target_calls == 1 + 3


def test_a_draft_with_another_vocabulary_gets_one_line():
    with pytest.raises(ValueError, match=r"draft's vocabulary \(40 tokens\) differs from the target's \(23\)"):
        inf.speculative_generate(small_gpt(), small_gpt(vocab=40), torch.tensor([1]), 5)


def test_acceptance_rule_accepts_below_p_over_q_and_stops_at_the_first_rejection():
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    p = torch.tensor([[0.25, 0.75], [0.6, 0.4], [1.0, 0.0]])
    tokens = torch.tensor([0, 0, 0])
    assert inf.acceptance_count(tokens, q, p, torch.tensor([0.4, 0.99, 0.0])) == 3    # 0.4 < 0.5, p >= q twice
    assert inf.acceptance_count(tokens, q, p, torch.tensor([0.5, 0.0, 0.0])) == 0     # 0.5 is not < 0.5
    assert inf.acceptance_count(torch.tensor([1, 0, 1]), q, p, torch.tensor([0.9, 0.1, 0.0])) == 2


def test_speculative_sampling_gives_exactly_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 9, generator=g) * 2, -1).double()
    q = torch.softmax(torch.randn(4, 9, generator=g) * 2, -1).double()
    accept = torch.minimum(torch.ones_like(p), p / q)                         # P(accept | x drawn from q)
    rejected = 1 - (q * accept).sum(-1, keepdim=True)
    out = q * accept + rejected * inf.residual_distribution(p, q)
    torch.testing.assert_close(out, p)


def test_verdict_reads_both_directions():
    assert inf.verdict(10.5, 10) == "holds" and inf.verdict(3, 10) == "falls short"
    assert inf.verdict(1.5, 2, higher_is_better=False) == "holds"


def test_without_smollm2_the_loader_says_so_in_one_line(monkeypatch):
    from course import llm

    monkeypatch.setattr(llm, "ensure_converted", lambda convert_if_missing=True: None)
    monkeypatch.setattr(llm, "LAST_MESSAGE", "The converted folder is missing.")
    model, tokenizer, line = inf.load_smollm2_hf()
    assert model is None and tokenizer is None
    assert "\n" not in line and line.endswith("The SmolLM2 cells are skipped.")


def test_train_lm_lowers_the_loss_and_is_seeded():
    ids = torch.arange(400) % 7
    losses = []
    for _ in range(2):
        model = small_gpt(d_model=16, layers=1, vocab=7, context=16)
        losses.append(inf.train_lm(model, ids, 30, context_length=16, batch_size=8, seed=3).train_loss)
    assert losses[0] == losses[1]
    assert sum(losses[0][-5:]) / 5 < sum(losses[0][:5]) / 5
