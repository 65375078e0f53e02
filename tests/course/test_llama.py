"""course.models.llama (lesson 12): each piece against Hugging Face's Llama, on tiny random configurations, so the
comparisons run everywhere (the real SmolLM2 weights: tests/course/test_llm.py).

Tolerances: logits within 1e-4 in float32 (the issue's bar; in practice equal); greedy tokens identical; RMSNorm and
RoPE against transformers' own functions within float32 (or float16) rounding; repeat_kv exactly.
"""
from __future__ import annotations

import math

import pytest
import torch
from hf_support import quietly

from course.efficient import KVCache
from course.layers import rms_norm
from course.models import LlamaConfig, WeightMismatchError
from course.models import llama as L
from course.positional import apply_rope, sinusoidal_frequencies

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

TOL = 1e-4


def tiny_hf(num_kv_heads: int = 2, tie: bool = True, seed: int = 0, **overrides):
    """A random transformers LlamaForCausalLM: 3 layers, width 48, 4 query heads."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=101, hidden_size=48, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=num_kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5,
                    rope_theta=500.0, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    settings.update(overrides)
    return quietly(hf_llama.LlamaForCausalLM, transformers.LlamaConfig(**settings)).eval()


@pytest.fixture(scope="module")
def pair():
    hf = tiny_hf()
    return L.Llama.from_hf(hf), hf


def ids(batch: int = 2, seq: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- the whole model

@pytest.mark.parametrize("kv_heads, tie", [(2, True), (4, False), (1, True)])
def test_logits_match_hf_llama_for_causal_lm_within_1e4(kv_heads, tie):
    hf = tiny_hf(kv_heads, tie)
    ours = L.Llama.from_hf(hf)
    with torch.no_grad():
        gap = (ours(ids()) - hf(ids()).logits).abs().max().item()
    assert gap < TOL, gap


def test_config_is_read_from_the_hf_config(pair):
    ours, hf = pair
    c = ours.config
    assert (c.vocab_size, c.d_model, c.num_heads, c.num_kv_heads, c.num_layers, c.d_ff, c.d_head) == (101, 48, 4, 2, 3, 128, 12)
    assert c.rope_base == 500.0 and c.context_length == 64 and c.tie_weights
    assert ours.lm_head.weight is ours.token_embedding.weight


def test_greedy_generation_is_token_identical_to_hf_generate_for_32_tokens(pair):
    ours, hf = pair
    prompt = ids(1, 8, seed=3)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=2)
    mine = L.generate(ours, prompt, 32)
    assert mine.shape == (1, 40)
    assert torch.equal(mine, theirs)


def test_cached_decoding_equals_the_full_forward_pass(pair):
    ours, _ = pair
    x = ids(2, 24, seed=4)
    with torch.no_grad():
        full = ours(x)
        caches = ours.new_caches()
        parts = [ours(x[:, :5], caches), ours(x[:, 5:9], caches)]          # a prefill, then several tokens at once
        parts += [ours(x[:, t:t + 1], caches) for t in range(9, 24)]        # then one at a time
    assert len(caches[0]) == 24 and caches[0].k.shape == (2, 2, 24, 12)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_generation_is_the_same_with_and_without_the_cache(pair):
    ours, _ = pair
    prompt = ids(2, 6, seed=5)
    assert torch.equal(L.generate(ours, prompt, 12), L.generate(ours, prompt, 12, use_cache=False))


def test_full_head_caches_give_the_same_tokens_with_group_size_times_the_memory(pair):
    ours, _ = pair
    prompt = ids(1, 10, seed=6)
    grouped, full = ours.new_caches(), ours.new_caches(full_heads=True)
    with torch.no_grad():
        a, b = ours(prompt, grouped), ours(prompt, full)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert L.kv_cache_bytes(full) == ours.config.group_size * L.kv_cache_bytes(grouped) > 0
    assert grouped[0].nbytes == grouped[0].k.nbytes * 2


def test_sampling_with_a_seeded_generator_is_reproducible_and_stops_at_a_stop_token(pair):
    ours, _ = pair
    prompt = ids(1, 5, seed=7)
    one = L.generate(ours, prompt, 10, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    two = L.generate(ours, prompt, 10, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, two)
    first = int(L.generate(ours, prompt, 1)[0, -1])
    stopped = L.generate(ours, prompt, 10, stop_ids=[first])
    assert stopped.shape[1] == prompt.shape[1] + 1 and int(stopped[0, -1]) == first


def test_a_row_that_stopped_is_padded_with_its_stop_token_while_others_go_on(pair):
    ours, _ = pair
    prompt = ids(2, 5, seed=8)
    greedy = L.generate(ours, prompt, 6)
    stop = int(greedy[0, 5])                          # row 0's first new token
    out = L.generate(ours, prompt, 6, stop_ids=[stop])
    if stop in greedy[1, 5:].tolist():
        pytest.skip("row 1 happens to produce the same token")
    assert (out[0, 5:] == stop).all()
    assert torch.equal(out[1], greedy[1])


# ------------------------------------------------------------------------------------- the pieces

def test_llama_rms_norm_matches_transformers_llama_rms_norm_in_float32_and_half_precision():
    norm = hf_llama.LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16) * 4
    for dtype, tol in [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)]:
        theirs = norm.to(dtype)(x.to(dtype))
        ours = L.llama_rms_norm(x.to(dtype), norm.weight.detach().to(dtype), 1e-5)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)
    module = L.LlamaRMSNorm(16, 1e-5)
    module.weight.data.copy_(norm.weight.float())
    torch.testing.assert_close(module(x), rms_norm(x, module.weight, 1e-5), atol=0, rtol=0)


def test_llama_rms_norm_keeps_float16_finite_where_float16_statistics_overflow():
    x = torch.full((1, 8), 300.0, dtype=torch.float16)          # 300 ** 2 = 90000 > 65504
    w = torch.ones(8, dtype=torch.float16)
    assert (rms_norm(x, w, 1e-5) == 0).all()                     # the overflow this lesson measures
    torch.testing.assert_close(L.llama_rms_norm(x, w, 1e-5), torch.ones(1, 8, dtype=torch.float16))


def test_rope_halves_matches_transformers_apply_rotary_pos_emb():
    q, k = torch.randn(2, 2, 3, 7, 16).unbind(0)
    positions = torch.arange(5, 12)
    rotary = hf_llama.LlamaRotaryEmbedding(transformers.LlamaConfig(hidden_size=64, num_attention_heads=4,
                                                                    rope_theta=100000.0))
    cos, sin = rotary(q, positions[None])
    q_hf, k_hf = hf_llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(L.rope_halves(q, positions, 100000.0), q_hf, atol=1e-5, rtol=1e-5)
    omega = L.float32_frequencies(16, 100000.0)
    torch.testing.assert_close(L.rope_halves(k, positions, 100000.0, omega), k_hf, atol=0, rtol=0)


def test_float32_frequencies_are_transformers_inv_freq_and_differ_from_float64_rounding_in_the_last_bit():
    rotary = hf_llama.LlamaRotaryEmbedding(transformers.LlamaConfig(hidden_size=576, num_attention_heads=9,
                                                                    rope_theta=100000.0))
    ours = L.float32_frequencies(64, 100000.0)
    assert torch.equal(ours, rotary.inv_freq)
    course = sinusoidal_frequencies(64, 100000.0)
    assert (ours - course).abs().max() < 1e-7 and not torch.equal(ours, course)


def test_rope_halves_is_interleaved_rope_on_permuted_dimensions():
    x = torch.randn(2, 9, 12)
    perm = torch.stack([torch.arange(6), torch.arange(6) + 6], -1).flatten()
    torch.testing.assert_close(L.rope_halves(x, torch.arange(9), 10000.0),
                               apply_rope(x[..., perm], interleaved=True)[..., torch.argsort(perm)], atol=1e-6, rtol=1e-6)


def test_repeat_kv_equals_transformers_repeat_kv():
    x = torch.randn(2, 3, 5, 4)
    for n in (1, 2, 3):
        assert torch.equal(L.repeat_kv(x, n), hf_llama.repeat_kv(x, n))
    with pytest.raises(ValueError, match=r"\[batch, kv_heads, seq, d_head\]"):
        L.repeat_kv(torch.randn(3, 5, 4), 2)


def _by_head_attention(attn: L.GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """An independent reference: loops over query heads, naive softmax attention, query head h reading key/value
    head h // group."""
    b, s, _ = x.shape
    hd, group = attn.d_head, attn.num_heads // attn.num_kv_heads
    pos = torch.arange(s)
    q = apply_rope(attn.q_proj(x).view(b, s, attn.num_heads, hd).transpose(1, 2), pos, attn.rope_base, interleaved=False)
    k = apply_rope(attn.k_proj(x).view(b, s, attn.num_kv_heads, hd).transpose(1, 2), pos, attn.rope_base, interleaved=False)
    v = attn.v_proj(x).view(b, s, attn.num_kv_heads, hd).transpose(1, 2)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    heads = []
    for h in range(attn.num_heads):
        scores = q[:, h] @ k[:, h // group].transpose(-2, -1) / math.sqrt(hd)
        heads.append(scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v[:, h // group])
    return attn.out_proj(torch.cat(heads, -1))


@pytest.mark.parametrize("kv_heads", [8, 4, 2, 1])
def test_grouped_query_attention_matches_a_head_by_head_reference(kv_heads):
    torch.manual_seed(0)
    attn = L.GroupedQueryAttention(64, 8, kv_heads, rope_base=10000.0)
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _by_head_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_gqa_equals_multi_head_attention_whose_key_value_projections_repeat_per_group():
    torch.manual_seed(0)
    gqa = L.GroupedQueryAttention(48, 6, 2, rope_base=1000.0)
    mha = L.GroupedQueryAttention(48, 6, 6, rope_base=1000.0)       # num_kv_heads == num_heads: multi-head
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
        for name in ("k_proj", "v_proj"):                            # each kv head's rows, once per query head
            rows = getattr(gqa, name).weight.view(2, 8, 48).repeat_interleave(3, dim=0).reshape(48, 48)
            getattr(mha, name).weight.copy_(rows)
        x = torch.randn(2, 9, 48)
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_multi_head_llama_attention_matches_torch_multihead_attention_at_one_position():
    # At position 0 RoPE is the identity, so a multi-head Llama attention is torch's MultiheadAttention without biases.
    torch.manual_seed(0)
    ours = L.GroupedQueryAttention(32, 4, 4, rope_base=10000.0)
    theirs = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        x = torch.randn(3, 1, 32)
        torch.testing.assert_close(ours(x), theirs(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_decode_step_is_the_attention_modules_cached_step():
    torch.manual_seed(0)
    attn = L.GroupedQueryAttention(48, 6, 2, rope_base=100000.0)
    x = torch.randn(2, 7, 48)
    cache = KVCache(16)
    with torch.no_grad():
        attn(x[:, :6], 0, cache)                                         # six tokens cached
        old_k, old_v = cache.k.clone(), cache.v.clone()
        expected = attn(x[:, 6:], 6, cache)                              # the seventh through the module
        new = x[:, 6:]
        q = attn.q_proj(new).view(2, 1, 6, 8).transpose(1, 2)
        k = attn.k_proj(new).view(2, 1, 2, 8).transpose(1, 2)
        v = attn.v_proj(new).view(2, 1, 2, 8).transpose(1, 2)
        out, k_all, v_all = L.decode_step(q, k, v, old_k, old_v, 100000.0, attn.omega)
        got = attn.out_proj(out.transpose(1, 2).reshape(2, 1, 48))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(k_all, cache.k, atol=0, rtol=0)
    torch.testing.assert_close(v_all, cache.v, atol=0, rtol=0)


def test_decode_step_on_an_empty_cache_is_attention_to_itself():
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    out, ck, cv = L.decode_step(q, k, v, torch.zeros(1, 2, 0, 8), torch.zeros(1, 2, 0, 8), 10000.0)
    torch.testing.assert_close(out, L.repeat_kv(v, 2), atol=1e-6, rtol=1e-6)   # one key: weight 1 on its value
    assert torch.equal(ck, k) and torch.equal(cv, v)                            # position 0: no rotation


def test_an_unfilled_model_loaded_through_the_plan_equals_one_built_normally(pair):
    ours, hf = pair
    fresh = L.Llama.unfilled(ours.config).load_hf_state_dict(hf.state_dict())
    assert fresh.lm_head.weight is fresh.token_embedding.weight
    with torch.no_grad():
        assert torch.equal(fresh(ids()), ours(ids()))


# ------------------------------------------------------------------------------------- bad input

def test_weights_of_the_wrong_shape_name_the_parameter_and_both_shapes(pair):
    _, hf = pair
    wrong = L.Llama(LlamaConfig(vocab_size=101, context_length=64, d_model=48, num_heads=4, num_kv_heads=4,
                                num_layers=3, d_ff=128, rope_base=500.0))
    with pytest.raises(WeightMismatchError, match=r"blocks\.0\.self_attn\.k_proj\.weight: the model's shape is "
                                                  r"\(48, 48\), but the checkpoint's .*k_proj\.weight gives \(24, 48\)"):
        wrong.load_hf_state_dict(hf.state_dict())


def test_a_checkpoint_with_more_layers_names_the_first_unused_tensor(pair):
    _, hf = pair
    short = L.Llama(LlamaConfig(vocab_size=101, context_length=64, d_model=48, num_heads=4, num_kv_heads=2,
                                num_layers=2, d_ff=128, rope_base=500.0))
    with pytest.raises(WeightMismatchError, match=r"first 'model\.layers\.2\."):
        short.load_hf_state_dict(hf.state_dict())


@pytest.mark.parametrize("make, words", [
    (lambda m: L.generate(m, torch.zeros(1, 0, dtype=torch.long), 4), "the prompt is empty"),
    (lambda m: L.generate(m, torch.zeros(1, 65, dtype=torch.long), 4), "the prompt has 65 tokens, more than the context window of 64"),
    (lambda m: L.generate(m, torch.zeros(1, 60, dtype=torch.long), 8), "ask for at most 4 new tokens"),
    (lambda m: L.generate(m, torch.zeros(1, 3), 4), "integer token ids"),
    (lambda m: L.generate(m, torch.zeros(1, 3, dtype=torch.long), 4, temperature=-1.0), "temperature must be >= 0"),
    (lambda m: m(torch.zeros(1, 70, dtype=torch.long)), "longer than the context window (64)"),
    (lambda m: m(torch.full((1, 3), 101)), "token ids must lie in [0, 101)"),
    (lambda m: m(torch.zeros(3, dtype=torch.long)), "shape [batch, seq]"),
])
def test_bad_input_gets_one_line_naming_the_problem(pair, make, words):
    ours, _ = pair
    with pytest.raises(ValueError) as info:
        make(ours)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change, words", [
    (dict(num_heads=6, num_kv_heads=4), "must be a multiple of num_kv_heads"),
    (dict(d_model=50, num_heads=4), "give d_head"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(d_head=7), "must be even"),
])
def test_an_impossible_configuration_is_refused_in_one_line(change, words):
    base = dict(vocab_size=10, context_length=8, d_model=48, num_heads=4, num_kv_heads=2, num_layers=1, d_ff=16)
    with pytest.raises(ValueError, match=words):
        LlamaConfig(**{**base, **change})


@pytest.mark.parametrize("overrides, words", [
    (dict(attention_bias=True), "no biases"),
    (dict(hidden_act="gelu"), "SwiGLU"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "plain RoPE"),
])
def test_a_llama_variant_this_model_does_not_implement_is_refused(overrides, words):
    config = transformers.LlamaConfig(hidden_size=48, num_attention_heads=4, intermediate_size=64,
                                      num_hidden_layers=1, vocab_size=10, **overrides)
    with pytest.raises(ValueError, match=words):
        LlamaConfig.from_hf(config)


def test_describe_names_the_shape(pair):
    ours, _ = pair
    line = L.describe(ours)
    assert "4 query heads sharing 2 key/value heads of size 12" in line and "RoPE base 500" in line



def test_apply_rope_takes_given_frequencies_and_refuses_the_wrong_number():
    x = torch.randn(2, 5, 8)
    given = apply_rope(x, base=500.0, interleaved=False, omega=sinusoidal_frequencies(8, 500.0))
    assert torch.equal(given, apply_rope(x, base=500.0, interleaved=False))
    assert not torch.equal(apply_rope(x, base=500.0, omega=L.float32_frequencies(8, 1e5)), apply_rope(x, base=500.0))
    with pytest.raises(ValueError, match=r"omega must hold d // 2 = 4 frequencies, got shape \(3,\)"):
        apply_rope(x, omega=torch.ones(3))
