"""course.efficient: every from-scratch piece against PyTorch's own attention, softmax and GPT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course import efficient as ef
from course.seed import seed_everything


def qkv(*shape, d_v=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, generator=g)
    k = torch.randn(*shape, generator=g)
    v = torch.randn(*shape[:-1], d_v or shape[-1], generator=g)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_naive_attention_matches_torch_sdpa(causal):
    q, k, v = qkv(2, 3, 37, 16)
    torch.testing.assert_close(ef.naive_attention(q, k, v, causal=causal),
                               F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-6, rtol=1e-5)  # float32


def test_naive_attention_rejects_mismatched_shapes_naming_them():
    q, k, v = qkv(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"q \(1, 2, 8, 16\), k \(1, 2, 8, 8\)"):
        ef.naive_attention(q, k[..., :8], v)


def test_attention_flops_follows_the_issue_orientation_figure():
    # 4 * b * h * n^2 * d for the forward; the issue's 12 ms naive at 4096 tokens is ~46 TFLOP/s.
    flops = ef.attention_flops(4, 16, 4096, 128)
    assert flops == 4 * 4 * 16 * 4096 ** 2 * 128
    assert abs(flops / 12e-3 / 1e12 - 45.8) < 0.1
    assert ef.attention_flops(4, 16, 4096, 128, causal=True) == flops / 2
    assert ef.attention_flops(4, 16, 4096, 128, backward=True) == flops * 3.5
    with pytest.raises(ValueError, match="seq"):
        ef.attention_flops(1, 1, 0, 8)


def test_fit_power_law_recovers_a_known_slope():
    sizes = [64, 128, 256, 512]
    slope, c = ef.fit_power_law(sizes, [3.0 * n ** 2 for n in sizes])
    assert abs(slope - 2) < 1e-9 and abs(c - 3) < 1e-6


@pytest.mark.parametrize("block", [1, 3, 7, 50, 64])
def test_online_softmax_equals_torch_softmax(block):
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 20
    torch.testing.assert_close(ef.online_softmax(x, block), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)  # float32


def test_online_softmax_update_over_all_blocks_gives_attention():
    q, k, v = qkv(2, 4, 10, 8, d_v=6)
    m, l, acc = ef.init_online_state(q, 6)
    for start in range(0, 10, 4):
        s = q @ k[..., start:start + 4, :].transpose(-2, -1) / 8 ** 0.5
        m, l, acc = ef.online_softmax_update(m, l, acc, s, v[..., start:start + 4, :])
    torch.testing.assert_close(acc / l, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-5)  # float32


def test_online_softmax_update_keeps_a_fully_masked_block_harmless():
    m, l, acc = ef.init_online_state(torch.zeros(3, 4), 2)
    s = torch.full((3, 5), float("-inf"))
    m2, l2, acc2 = ef.online_softmax_update(m, l, acc, s, torch.randn(5, 2))
    assert torch.isinf(m2).all() and torch.equal(l2, l) and torch.equal(acc2, acc)


def test_online_softmax_update_rejects_mismatched_blocks():
    m, l, acc = ef.init_online_state(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="scores_block"):
        ef.online_softmax_update(m, l, acc, torch.zeros(3, 5), torch.zeros(4, 2))


def test_tiled_attention_keys_matches_torch_sdpa():
    q, k, v = qkv(2, 3, 13, 8, d_v=5)
    torch.testing.assert_close(ef.tiled_attention_keys(q, k, v, 4), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-6, rtol=1e-5)  # float32


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block, block_k", [(8, None), (5, 7), (64, None), (1, 1)])
def test_flash_attention_torch_matches_torch_sdpa(causal, block, block_k):
    q, k, v = qkv(2, 3, 37, 16)
    ours = ef.flash_attention_torch(q, k, v, block, causal=causal, block_size_k=block_k)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                               atol=1e-6, rtol=1e-5)  # float32


def test_flash_attention_torch_handles_more_queries_than_keys_and_bf16():
    q, k, v = qkv(1, 2, 20, 16)
    k, v = k[..., :9, :], v[..., :9, :]
    for causal in (False, True):
        torch.testing.assert_close(ef.flash_attention_torch(q, k, v, 4, causal=causal),
                                   F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-6, rtol=1e-5)
    qb, kb, vb = (t.bfloat16() for t in qkv(1, 2, 33, 16))
    torch.testing.assert_close(ef.flash_attention_torch(qb, kb, vb, 8).float(),
                               F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float()),
                               atol=2e-2, rtol=2e-2)  # bfloat16 inputs and output, float32 inside


def test_flash_attention_torch_never_forms_the_square_matrix():
    """The memory tracker sees naive attention's n x n tensors and no such tensor in the tiled one."""
    q, k, v = qkv(1, 2, 256, 16)
    square = 1 * 2 * 256 * 256 * 4
    assert ef.measure_peak_bytes(lambda: ef.naive_attention(q, k, v)) >= 2 * square
    assert ef.measure_peak_bytes(lambda: ef.flash_attention_torch(q, k, v, 32)) < square / 2


def test_memory_accounting_grows_as_n_squared_for_naive_and_linearly_for_tiled():
    naive = [ef.naive_attention_bytes(1, 4, n, 64) for n in (512, 1024, 2048)]
    tiled = [ef.tiled_attention_bytes(1, 4, n, 64) for n in (512, 1024, 2048)]
    assert ef.fit_power_law([512, 1024, 2048], naive)[0] > 1.8
    assert ef.fit_power_law([512, 1024, 2048], tiled)[0] < 1.05
    assert naive[0] == 2 * 4 * 512 * 512 * 4 + 4 * 512 * 64 * 4


def test_memory_tracker_counts_a_tensor_once_and_frees_it():
    with ef.TensorMemoryTracker() as tr:
        a = torch.ones(1000)          # 4000 bytes
        b = a.view(10, 100)           # a view: no new storage
        del a, b
        c = torch.ones(500)           # 2000 bytes, after the first was freed
    assert tr.peak_bytes == 4000 and tr.current == 2000
    del c


def test_sliding_window_mask_is_symmetric_band():
    mask = ef.sliding_window_mask(6, 1)
    assert mask.dtype == torch.bool and torch.equal(mask, mask.T)
    assert mask.sum(1).tolist() == [2, 3, 3, 3, 3, 2]
    assert torch.equal(ef.sliding_window_mask(4, 0), torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="w must be non-negative"):
        ef.sliding_window_mask(4, -1)


def test_bigbird_mask_has_window_global_and_seeded_random_links():
    mask = ef.bigbird_mask(32, window=2, num_global=2, num_random=3, seed=0)
    assert mask[:2].all() and mask[:, :2].all()
    assert (mask & ef.sliding_window_mask(32, 2)).sum() == ef.sliding_window_mask(32, 2).sum()
    assert torch.equal(mask, ef.bigbird_mask(32, 2, 2, 3, seed=0))
    assert not torch.equal(mask, ef.bigbird_mask(32, 2, 2, 3, seed=1))
    assert (mask.sum(1) >= 3).all()
    with pytest.raises(ValueError, match="num_global"):
        ef.bigbird_mask(4, 1, 5, 0)


def test_lsh_buckets_put_a_vector_and_its_positive_multiple_together():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    b1, b2 = ef.lsh_buckets(x, 8), ef.lsh_buckets(3 * x, 8)
    assert torch.equal(b1, b2) and b1.min() >= 0 and b1.max() < 8
    assert not torch.equal(ef.lsh_buckets(-x, 8), b1)
    mask = ef.lsh_mask(x, 8)
    assert torch.equal(mask, mask.T) and mask.diagonal().all()
    assert 0 < ef.mask_density(mask) < 1
    with pytest.raises(ValueError, match="even"):
        ef.lsh_buckets(x, 3)


def test_sparse_masks_in_torch_sdpa_match_our_masked_attention():
    from course.attention import scaled_dot_product_attention
    q, k, v = qkv(1, 2, 24, 8)
    mask = ef.bigbird_mask(24, 2, 1, 2)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask)[0],
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)


def test_kv_cache_appends_along_the_sequence_and_reports_errors():
    cache = ef.KVCache(context_length=5)
    k1 = torch.randn(2, 3, 2, 4)
    keys, values = cache.append(k1, k1 + 1)
    assert len(cache) == 2 and keys.shape == (2, 3, 2, 4)
    k2 = torch.randn(2, 3, 1, 4)
    keys, values = cache.append(k2, k2 + 1)
    assert cache.length == 3 and torch.equal(keys[:, :, 2:], k2) and torch.equal(values[:, :, :2], k1 + 1)
    with pytest.raises(ValueError, match="cache full"):
        cache.append(torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4))
    with pytest.raises(ValueError, match="do not fit the cache"):
        cache.append(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(ValueError, match="context_length"):
        ef.KVCache(0)


def _tiny_gpt():
    from course.models import GPT, GPTConfig
    seed_everything(0)
    return GPT(GPTConfig(vocab_size=50, context_length=32, d_model=32, num_heads=4, num_layers=2)).eval()


def test_cached_gpt_forward_equals_uncached_logits():
    model = _tiny_gpt()
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(idx)
        caches = [ef.KVCache(32) for _ in model.blocks]
        parts = [model(idx[:, :5], caches=caches)]
        parts += [model(idx[:, t:t + 1], caches=caches) for t in range(5, 12)]
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5
    assert len(caches[0]) == 12 and caches[1].k.shape == (2, 4, 12, 8)


def test_cached_attention_appends_to_the_cache_and_attends_to_earlier_positions():
    from course.attention import MultiHeadAttention, causal_mask
    seed_everything(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    cache = ef.KVCache(6)
    with torch.no_grad():
        first = mha(x[:, :4], x[:, :4], x[:, :4], mask=causal_mask(4), cache=cache)
        last = mha(x[:, 4:], x[:, 4:], x[:, 4:], mask=causal_mask(6)[4:], cache=cache)
        full = mha(x, x, x, mask=causal_mask(6))
    torch.testing.assert_close(torch.cat([first, last], dim=1), full, atol=1e-6, rtol=1e-5)  # float32
    assert len(cache) == 6


def test_cached_gpt_forward_rejects_wrong_caches_and_overlong_input():
    model = _tiny_gpt()
    with pytest.raises(ValueError, match="one KVCache per block: 2 blocks, 1 caches"):
        model(torch.zeros(1, 3, dtype=torch.long), caches=[ef.KVCache(32)])
    caches = [ef.KVCache(32) for _ in model.blocks]
    with torch.no_grad():
        model(torch.zeros(1, 30, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match=r"30 cached \+ 3 new tokens are longer than the context window \(32\)"):
        model(torch.zeros(1, 3, dtype=torch.long), caches=caches)


def test_greedy_decode_with_and_without_cache_gives_the_same_tokens():
    model = _tiny_gpt()
    prompt = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(1))
    a = ef.greedy_decode(model, prompt, 10, use_cache=True)
    b = ef.greedy_decode(model, prompt, 10, use_cache=False)
    assert a.shape == (1, 14) and torch.equal(a, b)
    with pytest.raises(ValueError, match="context"):
        ef.greedy_decode(model, prompt, 40)


# ------------------------------------------------------------------------------ the causal tile grid

def test_tile_grid_marks_full_diagonal_and_skipped_tiles():
    grid = ef.tile_grid(10, 10, 4)                 # tiles of rows 0-3, 4-7, 8-9 against the same keys
    assert grid.tolist() == [[1, 0, 0], [2, 1, 0], [2, 2, 1]]
    assert (ef.tile_grid(10, 10, 4, causal=False) == ef.TILE_FULL).all()
    # Rectangular tiles: queries 0-3 and 4-7 against keys 0-2, 3-5, 6-8.
    assert ef.tile_grid(8, 9, 4, 3).tolist() == [[1, 1, 0], [2, 1, 1]]
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        ef.tile_grid(8, 8, 0)


@pytest.mark.parametrize("n, block, block_k", [(300, 64, None), (37, 8, 5), (64, 16, None)])
def test_causal_flash_loop_skips_the_tiles_above_the_diagonal_with_the_same_output(n, block, block_k):
    q, k, v = qkv(1, 2, n, 16)
    causal_log, full_log = [], []
    causal = ef.flash_attention_torch(q, k, v, block, causal=True, block_size_k=block_k, tile_log=causal_log)
    ef.flash_attention_torch(q, k, v, block, causal=False, block_size_k=block_k, tile_log=full_log)
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-6, rtol=1e-5)  # float32
    grid = ef.tile_grid(n, n, block, block_k)
    assert sorted(causal_log) == [tuple(t) for t in (grid != ef.TILE_SKIPPED).nonzero().tolist()]
    assert len(full_log) == grid.numel() and len(causal_log) < len(full_log)


def test_count_ops_counts_dispatched_operations_and_grows_with_the_tiles():
    a = torch.ones(3)
    assert ef.count_ops(lambda: a + a * 2) == 2
    q, k, v = qkv(1, 1, 64, 8)
    few = ef.count_ops(lambda: ef.flash_attention_torch(q, k, v, 32))
    many = ef.count_ops(lambda: ef.flash_attention_torch(q, k, v, 8))
    assert many > 10 * few > 0


# ------------------------------------------------------------------------------ sparse patterns

def test_longformer_mask_is_a_window_plus_global_rows_and_columns():
    mask = ef.longformer_mask(12, 1, global_tokens=[0, 7])
    window = ef.sliding_window_mask(12, 1)
    assert mask[[0, 7]].all() and mask[:, [0, 7]].all()
    others = [i for i in range(12) if i not in (0, 7)]
    rest = mask[others][:, others]
    assert torch.equal(rest, window[others][:, others])
    assert torch.equal(ef.longformer_mask(12, 1, []), window)
    with pytest.raises(ValueError, match="global_tokens"):
        ef.longformer_mask(5, 1, [5])


@pytest.mark.parametrize("n, w, block", [(37, 4, None), (37, 4, 9), (8, 0, None), (5, 10, None), (64, 16, None)])
def test_sliding_window_attention_equals_sdpa_with_the_window_mask(n, w, block):
    q, k, v = qkv(2, 3, n, 8, d_v=5)
    torch.testing.assert_close(ef.sliding_window_attention(q, k, v, w, block),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=ef.sliding_window_mask(n, w)),
                               atol=1e-6, rtol=1e-5)  # float32


def test_sliding_window_attention_rejects_blocks_narrower_than_the_window():
    q, k, v = qkv(1, 16, 8)
    with pytest.raises(ValueError, match="block_size must be at least w=4"):
        ef.sliding_window_attention(q, k, v, 4, block_size=3)


def shared_qk_attention(x, v, mask):
    """Independent reference: dense Reformer attention (keys = normalised queries) restricted to ``mask``."""
    keys = x / x.norm(dim=-1, keepdim=True)
    scores = (x @ keys.transpose(-2, -1)) / x.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def test_lsh_chunk_mask_sorts_by_bucket_and_reaches_one_chunk_back():
    # Buckets 0,1,0,1,0,1: sorted order 0,2,4 | 1,3,5; chunks of 2: [0,2] [4,1] [3,5].
    buckets = torch.tensor([[0, 1, 0, 1, 0, 1]])
    reach = ef.lsh_chunk_mask(buckets, 2, same_bucket=False, exclude_self=False)
    chunk = {0: 0, 2: 0, 4: 1, 1: 1, 3: 2, 5: 2}
    expected = torch.tensor([[chunk[i] - 1 <= chunk[j] <= chunk[i] for j in range(6)] for i in range(6)])
    assert torch.equal(reach, expected)
    same = ef.lsh_chunk_mask(buckets, 2, same_bucket=True, exclude_self=False)
    assert torch.equal(same, expected & (buckets[0][:, None] == buckets[0][None, :]))
    # Token 1 is alone in its bucket within its reach (chunk [4,1] and chunk [0,2] before it): itself only.
    no_self = ef.lsh_chunk_mask(buckets, 2)
    assert no_self[1].tolist() == [False, True, False, False, False, False]
    assert not no_self[4, 4] and no_self[4].tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize("shape, n_buckets, chunk, rounds, same_bucket, exclude_self", [
    ((37, 8), 4, 5, 1, True, True), ((2, 3, 40, 8), 8, 6, 3, True, True), ((40, 8), 4, 7, 2, False, True),
    ((2, 33, 8), 6, 4, 4, False, False), ((10, 8), 16, 2, 2, True, True)])
def test_lsh_attention_equals_dense_attention_on_its_chunk_mask(shape, n_buckets, chunk, rounds, same_bucket,
                                                               exclude_self):
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(*shape, generator=g), torch.randn(*shape[:-1], 5, generator=g)
    buckets = torch.stack([ef.lsh_buckets(x, n_buckets, seed=r) for r in range(rounds)], dim=-2)
    mask = ef.lsh_chunk_mask(buckets, chunk, same_bucket, exclude_self)
    ours = ef.lsh_attention(x, v, n_buckets, chunk, rounds, seed=0, same_bucket=same_bucket, exclude_self=exclude_self)
    torch.testing.assert_close(ours, shared_qk_attention(x, v, mask), atol=1e-5, rtol=1e-5)  # float32


def test_lsh_attention_in_one_chunk_equals_dense_attention_restricted_to_the_same_bucket_mask():
    x = torch.randn(2, 50, 16, generator=torch.Generator().manual_seed(4))
    v = torch.randn(2, 50, 6, generator=torch.Generator().manual_seed(5))
    ours = ef.lsh_attention(x, v, n_buckets=6, chunk_size=50, exclude_self=False)
    torch.testing.assert_close(ours, shared_qk_attention(x, v, ef.lsh_mask(x, 6)), atol=1e-5, rtol=1e-5)  # float32


def test_lsh_attention_rejects_bad_buckets():
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"buckets .* must be \[..., rounds, n\]"):
        ef.lsh_attention(x, x, 4, 2, buckets=torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        ef.lsh_attention(x, x, 4, 0)
    with pytest.raises(ValueError, match="n_rounds"):
        ef.lsh_attention(x, x, 4, 2, n_rounds=0)


def test_top_mass_pairs_takes_the_fewest_keys_reaching_the_mass():
    w = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    assert ef.top_mass_pairs(w, 0.9).tolist() == [[False, True, True, True]]
    assert ef.top_mass_pairs(w, 0.8).tolist() == [[False, True, False, True]]   # 0.5 + 0.3 reach 0.8 exactly
    assert ef.top_mass_pairs(w, 1.0).all()
    with pytest.raises(ValueError, match="mass"):
        ef.top_mass_pairs(w, 0)


def test_shuffled_buckets_keep_the_bucket_sizes_and_catch_rate_counts_shares():
    b = torch.tensor([[0, 0, 1, 2, 2, 2], [1, 1, 1, 0, 0, 2]])
    s = ef.shuffled_buckets(b, seed=0)
    for row, srow in zip(b, s):
        assert torch.equal(torch.bincount(row, minlength=3), torch.bincount(srow, minlength=3))
    pairs = torch.tensor([[True, True], [False, True]])
    assert ef.catch_rate(pairs, torch.tensor([[True, False], [True, True]])) == 2 / 3
    with pytest.raises(ValueError, match="nothing to catch"):
        ef.catch_rate(torch.zeros(2, 2, dtype=torch.bool), pairs)


def test_lsh_buckets_catch_clustered_attention_far_better_than_random_buckets():
    x, group = ef.clustered_vectors(256, 32, 8, spread=0.5, scale=60.0, seed=0)
    assert x.shape == (256, 32) and group.shape == (256,)
    keys = x / x.norm(dim=-1, keepdim=True)
    eye = torch.eye(256, dtype=torch.bool)
    weights = torch.softmax((x @ keys.T / 32 ** 0.5).masked_fill(eye, float("-inf")), dim=-1)
    top = ef.top_mass_pairs(weights, 0.9) & ~eye
    buckets = torch.stack([ef.lsh_buckets(x, 8, seed=r) for r in range(2)])
    lsh = ef.catch_rate(top, (buckets[:, :, None] == buckets[:, None, :]).any(0))
    shuffled = ef.shuffled_buckets(buckets, seed=1)
    rand = ef.catch_rate(top, (shuffled[:, :, None] == shuffled[:, None, :]).any(0))
    assert lsh > 0.5 and lsh > 2.5 * rand, (lsh, rand)


def test_decode_step_times_returns_one_positive_time_per_length():
    model = _tiny_gpt()
    for use_cache in (True, False):
        times = ef.decode_step_times(model, [4, 20], use_cache=use_cache, min_run_time=0.001)
        assert len(times) == 2 and all(t > 0 for t in times)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 31\]"):
        ef.decode_step_times(model, [32])
