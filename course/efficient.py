"""Efficient attention, built from scratch (lesson 11).

- :func:`naive_attention`: softmax(QK^T/sqrt(d)) V that materialises the n x n scores, the baseline.
- :func:`attention_flops`: the floating-point operations attention does, to turn times into TFLOP/s.
- :func:`online_softmax` and :func:`online_softmax_update`: softmax in one streaming pass over blocks,
  keeping only a running maximum ``m`` and a running sum ``l`` (the idea behind FlashAttention).
- :func:`flash_attention_torch`: tiled attention in plain PyTorch that never forms the n x n matrix;
  :func:`tile_grid` says which (query tile, key tile) pairs it computes, masks or skips under a causal mask.
- :func:`naive_attention_bytes`, :func:`tiled_attention_bytes` and :class:`TensorMemoryTracker`:
  what each algorithm keeps in memory, counted and measured.
- :func:`count_ops`: how many PyTorch operations a function dispatches (why a Python tile loop is slow).
- Sparse patterns as masks: :func:`sliding_window_mask`, :func:`longformer_mask` (window + global tokens),
  :func:`bigbird_mask` (BigBird), :func:`lsh_buckets` / :func:`lsh_mask` (Reformer), with
  :func:`mask_density` as their cost; :func:`sliding_window_attention` computes only the band.
- Reformer's LSH attention: :func:`lsh_attention` (shared query/key, hash, sort by bucket, attend within
  chunks and one chunk back, several hash rounds) and :func:`lsh_chunk_mask`, the same pairs as a dense
  mask; :func:`top_mass_pairs`, :func:`catch_rate` and :func:`shuffled_buckets` measure whether the
  buckets catch the pairs that carry the attention; :func:`clustered_vectors` makes data with structure.
- :class:`KVCache` and :func:`greedy_decode`: autoregressive decoding that reuses the keys and values
  of earlier tokens instead of recomputing them (the course's GPT takes one cache per block:
  ``model(new_ids, caches=caches)``); :func:`decode_step_times` times each generated token.

Shapes follow the course's conventions: ``[batch, heads, seq, d_head]``; masks are boolean with
True where attention is allowed.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from .device import model_device
from .utils import shape_of

__all__ = [
    "naive_attention", "attention_flops", "online_softmax_stats", "online_softmax",
    "online_softmax_update", "init_online_state", "tiled_attention_keys", "flash_attention_torch",
    "TILE_SKIPPED", "TILE_PARTIAL", "TILE_FULL", "tile_grid",
    "naive_attention_bytes", "tiled_attention_bytes", "TensorMemoryTracker", "measure_peak_bytes", "count_ops",
    "sliding_window_mask", "longformer_mask", "bigbird_mask", "sliding_window_attention",
    "lsh_buckets", "lsh_mask", "mask_density", "lsh_chunk_mask", "lsh_attention", "shuffled_buckets",
    "top_mass_pairs", "catch_rate", "clustered_vectors",
    "kv_append", "KVCache", "greedy_decode", "decode_step_times", "fit_power_law",
]


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError, naming the shapes, unless q [..., n_q, d], k [..., n_k, d], v [..., n_k, d_v] fit."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim < 2:
            shape = shape_of(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [..., seq, d], got {shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension: q {shape_of(q)}, k {shape_of(k)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys (dim -2): k {shape_of(k)}, v {shape_of(v)}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"q, k, v must share their leading (batch, heads) dimensions: "
                         f"q {shape_of(q)}, k {shape_of(k)}, v {shape_of(v)}")


# ---------------------------------------------------------------------------------------------
# The baseline and its cost
# ---------------------------------------------------------------------------------------------

def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q k^T * scale) v, written the obvious way: the whole score matrix is materialised.

    q: [..., n_q, d], k: [..., n_k, d], v: [..., n_k, d_v] -> [..., n_q, d_v].
    ``causal=True``: query i sees keys 0..i (top-left aligned, as ``is_causal`` in PyTorch's SDPA).
    Memory: the scores and the weights are two [..., n_q, n_k] tensors, hence O(n^2).
    """
    _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale               # [..., n_q, n_k]: the n x n matrix
    if causal:
        n_q, n_k = scores.shape[-2:]
        allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # softmax in float32, as fused kernels do
    return weights @ v


def attention_flops(batch: int, heads: int, seq: int, d: int, causal: bool = False,
                    backward: bool = False) -> float:
    """Floating-point operations of attention with ``seq`` queries and keys of head size ``d``.

    Forward: two matrix products (q k^T and weights v), each seq * seq * d multiply-adds, that is
    2 * seq * seq * d FLOPs, per head: ``4 * batch * heads * seq^2 * d``. Causal attention needs
    only half of them (the convention of FlashAttention's benchmarks). ``backward=True`` returns
    forward + backward, where the backward does 2.5x the forward's work (five matrix products
    instead of two): 3.5x in all.
    The softmax's exponentials are not counted.
    """
    for name, value in (("batch", batch), ("heads", heads), ("seq", seq), ("d", d)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    flops = 4.0 * batch * heads * seq * seq * d
    if causal:
        flops /= 2
    return flops * 3.5 if backward else flops


def fit_power_law(sizes, values) -> tuple[float, float]:
    """Least-squares fit of ``value = c * size^slope`` on log-log axes; returns ``(slope, c)``."""
    x = torch.log(torch.as_tensor(sizes, dtype=torch.float64))
    y = torch.log(torch.as_tensor(values, dtype=torch.float64))
    if x.numel() < 2 or x.shape != y.shape:
        raise ValueError(f"need at least two (size, value) pairs of equal length, got {x.numel()} and {y.numel()}")
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return slope, float(torch.exp(y.mean() - slope * x.mean()))


# ---------------------------------------------------------------------------------------------
# Online softmax
# ---------------------------------------------------------------------------------------------

def online_softmax_stats(x: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Row maximum ``m`` and ``l = sum(exp(x - m))`` in one pass over blocks of the last axis.

    x: [..., n] -> (m [..., 1], l [..., 1]). Each block updates the running pair: when a block
    raises the maximum from m_old to m_new, the sum so far is rescaled by exp(m_old - m_new).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    m = torch.full((*x.shape[:-1], 1), float("-inf"), dtype=x.dtype, device=x.device)
    l = torch.zeros_like(m)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]
        m_new = torch.maximum(m, block.amax(dim=-1, keepdim=True))
        l = l * torch.exp(m - m_new) + torch.exp(block - m_new).sum(dim=-1, keepdim=True)
        m = m_new
    return m, l


def online_softmax(x: Tensor, block_size: int) -> Tensor:
    """Softmax along the last axis, its statistics gathered block by block (see :func:`online_softmax_stats`).

    x: [..., n] -> [..., n], equal to ``torch.softmax(x, dim=-1)``.
    """
    m, l = online_softmax_stats(x, block_size)
    return torch.exp(x - m) / l


def init_online_state(q: Tensor, d_v: int) -> tuple[Tensor, Tensor, Tensor]:
    """Empty running state for queries ``q [..., n_q, d]``: m = -inf, l = 0, acc = 0 (float32)."""
    lead = (*q.shape[:-1], 1)
    m = torch.full(lead, float("-inf"), dtype=torch.float32, device=q.device)
    return m, torch.zeros(lead, dtype=torch.float32, device=q.device), \
        torch.zeros(*q.shape[:-1], d_v, dtype=torch.float32, device=q.device)


def online_softmax_update(m: Tensor, l: Tensor, acc: Tensor, scores_block: Tensor,
                          v_block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of FlashAttention's inner loop: fold a block of keys into the running state.

    m: [..., n_q, 1] running row maximum of the scores seen so far (-inf before the first block)
    l: [..., n_q, 1] running sum of exp(score - m)
    acc: [..., n_q, d_v] running sum of exp(score - m) * v (unnormalised output)
    scores_block: [..., n_q, B] scores of the queries against this block's B keys (-inf = masked)
    v_block: [..., B, d_v] this block's values
    returns (m_new, l_new, acc_new), same shapes. After the last block, the output is acc / l.
    """
    if scores_block.shape[-1] != v_block.shape[-2] or acc.shape[-1] != v_block.shape[-1]:
        raise ValueError(f"shapes do not fit: scores_block {shape_of(scores_block)} [..., n_q, B], "
                         f"v_block {shape_of(v_block)} [..., B, d_v], acc {shape_of(acc)} [..., n_q, d_v]")
    m_new = torch.maximum(m, scores_block.amax(dim=-1, keepdim=True))
    # A row that has seen only masked scores keeps m = -inf; shift it by 0 so exp() gives 0, not NaN.
    shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - shift)                      # how much the old state shrinks
    p = torch.exp(scores_block - shift)               # [..., n_q, B]
    l_new = alpha * l + p.sum(dim=-1, keepdim=True)
    acc_new = alpha * acc + p @ v_block.to(p.dtype)
    return m_new, l_new, acc_new


def tiled_attention_keys(q: Tensor, k: Tensor, v: Tensor, block_size: int) -> Tensor:
    """Attention over key blocks only (the lesson's exercise): q [..., n_q, d] -> [..., n_q, d_v].

    Non-causal. Each query row keeps (m, l, acc) and folds in ``block_size`` keys at a time.
    """
    _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    m, l, acc = init_online_state(q, v.shape[-1])
    for start in range(0, k.shape[-2], block_size):
        s = (q @ k[..., start:start + block_size, :].transpose(-2, -1)).float() * scale
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:start + block_size, :])
    return (acc / l).to(q.dtype)


TILE_SKIPPED, TILE_PARTIAL, TILE_FULL = 0, 1, 2


def tile_grid(n_q: int, n_k: int, block_size: int, block_size_k: int | None = None,
              causal: bool = True) -> Tensor:
    """What :func:`flash_attention_torch` does with each (query tile, key tile): long [T_q, T_k].

    ``TILE_FULL`` (2): every pair of the tile is allowed, computed without a mask; ``TILE_PARTIAL`` (1):
    the tile crosses the causal diagonal (top-left aligned: query i sees keys 0..i), computed and then
    masked; ``TILE_SKIPPED`` (0): every pair lies above the diagonal, never computed. Without
    ``causal`` every tile is full. T_q = ceil(n_q / block_size), T_k = ceil(n_k / block_size_k).
    """
    for name, value in (("n_q", n_q), ("n_k", n_k), ("block_size", block_size),
                        ("block_size_k", block_size if block_size_k is None else block_size_k)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    bk = block_size_k or block_size
    q_first = torch.arange(0, n_q, block_size)                       # first query of each tile
    q_last = torch.clamp(q_first + block_size, max=n_q) - 1
    k_first = torch.arange(0, n_k, bk)
    k_last = torch.clamp(k_first + bk, max=n_k) - 1
    grid = torch.full((len(q_first), len(k_first)), TILE_FULL, dtype=torch.long)
    if causal:
        grid[k_last[None, :] > q_first[:, None]] = TILE_PARTIAL      # some key after some query
        grid[k_first[None, :] > q_last[:, None]] = TILE_SKIPPED      # every key after every query
    return grid


def flash_attention_torch(q: Tensor, k: Tensor, v: Tensor, block_size: int = 64, causal: bool = False,
                          scale: float | None = None, block_size_k: int | None = None,
                          tile_log: list | None = None) -> Tensor:
    """FlashAttention's forward pass in plain PyTorch: tiles of queries against tiles of keys.

    q: [..., n_q, d], k: [..., n_k, d], v: [..., n_k, d_v] -> [..., n_q, d_v].
    The largest temporary is one tile of scores [..., block_size, block_size_k]; the n_q x n_k
    matrix is never formed. Statistics and accumulator are kept in float32. ``causal=True`` is
    top-left aligned (query i sees keys 0..i): the tiles wholly above the diagonal are skipped and
    only the tiles crossing it are masked, as :func:`tile_grid` lays out. ``tile_log``, a list, gets
    one ``(query tile, key tile)`` pair per tile computed.
    """
    _check_qkv(q, k, v)
    if block_size < 1 or (block_size_k is not None and block_size_k < 1):
        raise ValueError(f"block sizes must be at least 1, got {block_size}, {block_size_k}")
    bk = block_size_k or block_size
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    grid = tile_grid(n_q, n_k, block_size, bk, causal).tolist()
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for ti, qs in enumerate(range(0, n_q, block_size)):
        q_tile = q[..., qs:qs + block_size, :]
        rows = q_tile.shape[-2]
        m, l, acc = init_online_state(q_tile, v.shape[-1])
        for tj, ks in enumerate(range(0, n_k, bk)):
            if grid[ti][tj] == TILE_SKIPPED:                  # every key here comes after every query
                continue
            s = (q_tile @ k[..., ks:ks + bk, :].transpose(-2, -1)).float() * scale
            if grid[ti][tj] == TILE_PARTIAL:                  # the tile crosses the diagonal
                qi = torch.arange(qs, qs + rows, device=q.device)[:, None]
                kj = torch.arange(ks, ks + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(kj > qi, float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, v[..., ks:ks + bk, :].float())
            if tile_log is not None:
                tile_log.append((ti, tj))
        # Every query sees key 0 at least, so l > 0; the clamp only guards against a 0/0 anyway.
        out[..., qs:qs + rows, :] = (acc / l.clamp_min(torch.finfo(torch.float32).tiny)).to(q.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Memory: counted and measured
# ---------------------------------------------------------------------------------------------

def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def naive_attention_bytes(batch: int, heads: int, seq: int, d: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the intermediates :func:`naive_attention` materialises at its peak (inputs excluded).

    The scores [b, h, n, n] and the weights [b, h, n, n] are alive together when the softmax runs
    (counted at float32, the softmax's precision, plus the weights cast back to ``dtype`` when it
    is not float32), and the output [b, h, n, d]. A backward pass would keep the weights as well.
    """
    square = batch * heads * seq * seq
    size = _itemsize(dtype)
    extra = 0 if dtype == torch.float32 else square * size
    return square * size + square * 4 + extra + batch * heads * seq * d * size


def tiled_attention_bytes(batch: int, heads: int, seq: int, d: int, block_size: int = 64,
                          dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the intermediates :func:`flash_attention_torch` keeps alive at once (inputs excluded).

    One tile of scores and one of exp(scores) [b, h, B, B] (float32), the running m, l and acc for
    one query tile [b, h, B, 1 + 1 + d] (float32), and the output [b, h, n, d]. Only the output
    grows with n, and only linearly.
    """
    bq = min(block_size, seq)
    tile = 2 * batch * heads * bq * bq * 4
    state = batch * heads * bq * (2 + d) * 4
    return tile + state + batch * heads * seq * d * _itemsize(dtype)


class TensorMemoryTracker(TorchDispatchMode):
    """Measure, on any device, the peak bytes of tensors created inside a ``with`` block.

    Every PyTorch operation passes through the dispatcher; this mode sees each result, adds the
    bytes of its storage when the storage is new, and subtracts them when the last tensor using it
    is freed. ``peak_bytes`` is the largest total alive at once. What it cannot see: scratch
    memory a fused kernel allocates internally, and the allocator's rounding and caching, so on a
    GPU prefer ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak_bytes = 0
        self._live: dict[int, list[int]] = {}      # storage pointer -> [bytes, tensors using it]

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def _track(self, t: Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = storage.data_ptr()
        if key == 0:
            return
        if key in self._live:
            self._live[key][1] += 1
        else:
            self._live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.current)
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, Tensor):
                self._track(t)
        return out


def measure_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensors ``fn()`` creates (its result included). See :class:`TensorMemoryTracker`."""
    with TensorMemoryTracker() as tracker:
        result = fn()
    del result
    return tracker.peak_bytes


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    """How many PyTorch operations ``fn()`` dispatches. Each pays a fixed cost in Python and the
    dispatcher, whatever the size of its tensors; on a GPU most of them (not views such as slices or
    transposes) also launch a kernel of their own."""
    with _OpCounter() as counter:
        fn()
    return counter.count


# ---------------------------------------------------------------------------------------------
# Sparse attention patterns
# ---------------------------------------------------------------------------------------------

def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")


def sliding_window_mask(n: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Longformer's local pattern: bool [n, n], True where ``|i - j| <= w``.

    Each query sees ``w`` keys on each side and itself: at most ``2w + 1`` keys, so the cost grows
    as n * (2w + 1) instead of n^2.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _check_positive(w=w)
    i = torch.arange(n, device=device)
    return (i[:, None] - i[None, :]).abs() <= w


def longformer_mask(n: int, w: int, global_tokens=(0,)) -> Tensor:
    """Longformer's pattern: bool [n, n] = sliding window (``|i - j| <= w``) | global tokens.

    A global token (an index in ``global_tokens``, such as a classification token) attends to every
    token, and every token attends to it: its row and its column are all True.
    """
    mask = sliding_window_mask(n, w)
    idx = torch.as_tensor(list(global_tokens), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"global_tokens must be positions in [0, {n}), got {idx.tolist()}")
    mask[idx, :] = True
    mask[:, idx] = True
    return mask


def bigbird_mask(n: int, window: int, num_global: int, num_random: int, seed: int = 0) -> Tensor:
    """BigBird's pattern: bool [n, n] = sliding window | global tokens | random links.

    The first ``num_global`` tokens attend to everything and everything attends to them (as in
    :func:`longformer_mask`); each query also gets ``num_random`` keys drawn at random (seeded, so the
    picture is reproducible).
    """
    if num_global > n:
        raise ValueError(f"num_global={num_global} is more than the n={n} tokens")
    _check_positive(num_global=num_global, num_random=num_random)
    mask = longformer_mask(n, window, range(num_global))
    if num_random:
        g = torch.Generator().manual_seed(seed)
        picks = torch.rand(n, n, generator=g).argsort(dim=-1)[:, :min(num_random, n)]
        mask[torch.arange(n)[:, None], picks] = True
    return mask


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, w: int, block_size: int | None = None) -> Tensor:
    """Attention restricted to ``|i - j| <= w`` that computes only the band, not the n x n scores.

    q, k: [..., n, d], v: [..., n, d_v] -> [..., n, d_v], equal to dense attention with
    :func:`sliding_window_mask`. The sequence is cut into blocks of ``block_size`` (at least ``w``;
    default ``max(w, 1)``) positions; each block of queries meets only its own block of keys and the
    blocks on either side: scores [..., n / block, block, 3 block], about ``3 * block * n`` pairs
    instead of ``n^2``.
    """
    _check_qkv(q, k, v)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"sliding-window self-attention needs as many queries as keys: q {shape_of(q)}, k {shape_of(k)}")
    _check_positive(w=w)
    b = max(int(w), 1) if block_size is None else int(block_size)
    if b < max(int(w), 1):
        raise ValueError(f"block_size must be at least w={w} (neighbours must lie in the adjacent blocks), got {b}")
    n, d = q.shape[-2], q.shape[-1]
    blocks = -(-n // b)
    pad = blocks * b - n

    def split(t: Tensor) -> Tensor:                         # [..., n, e] -> [..., blocks, b, e]
        return torch.nn.functional.pad(t, (0, 0, 0, pad)).unflatten(-2, (blocks, b))

    def neighbours(t: Tensor) -> Tensor:                    # [..., blocks, b, e] -> [..., blocks, 3b, e]
        t = torch.nn.functional.pad(t, (0, 0, 0, 0, 1, 1))  # an empty block before the first and after the last
        return torch.cat([t[..., :-2, :, :], t[..., 1:-1, :, :], t[..., 2:, :, :]], dim=-2)

    qb, kb, vb = split(q), neighbours(split(k)), neighbours(split(v))
    q_pos = torch.arange(blocks * b, device=q.device).view(blocks, b, 1)
    k_pos = (torch.arange(blocks, device=q.device).view(blocks, 1, 1) - 1) * b \
        + torch.arange(3 * b, device=q.device).view(1, 1, 3 * b)
    allowed = ((q_pos - k_pos).abs() <= w) & (k_pos >= 0) & (k_pos < n)       # [blocks, b, 3b]
    scores = (qb @ kb.transpose(-2, -1)).float() / math.sqrt(d)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = weights.nan_to_num(0.0).to(v.dtype) @ vb           # padded query rows may see no key: 0, then cut
    return out.flatten(-3, -2)[..., :n, :]


def lsh_buckets(x: Tensor, n_buckets: int, seed: int = 0) -> Tensor:
    """Reformer's angular LSH: x [..., n, d] -> bucket ids long [..., n] in [0, n_buckets).

    A random rotation R [d, n_buckets / 2] projects each vector; its bucket is the argmax of
    [xR, -xR]. Vectors pointing in similar directions tend to share a bucket.
    """
    if n_buckets < 2 or n_buckets % 2:
        raise ValueError(f"n_buckets must be an even number >= 2, got {n_buckets}")
    g = torch.Generator().manual_seed(seed)
    rotation = torch.randn(x.shape[-1], n_buckets // 2, generator=g).to(x.device, x.dtype)
    projected = x @ rotation
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


def lsh_mask(q: Tensor, n_buckets: int, seed: int = 0) -> Tensor:
    """bool [..., n, n]: True where query i and key j (Reformer shares them) fall in the same bucket."""
    buckets = lsh_buckets(q, n_buckets, seed)
    return buckets[..., :, None] == buckets[..., None, :]


def mask_density(mask: Tensor) -> float:
    """Fraction of (query, key) pairs a mask allows: the cost relative to dense attention."""
    return float(mask.float().mean())


# Reformer: one vector per token serves as query and, normalised, as key ("shared-QK attention"),
# so a token's dot product with itself is the largest in its row; it attends to itself only when it
# has no other key. Hash rounds r = 0, 1, ... use the seeds seed, seed + 1, ...

def _lsh_round_buckets(x: Tensor, n_buckets: int, n_rounds: int, seed: int) -> Tensor:
    if int(n_rounds) < 1:
        raise ValueError(f"n_rounds must be at least 1, got {n_rounds}")
    return torch.stack([lsh_buckets(x, n_buckets, seed + r) for r in range(n_rounds)], dim=-2)


def _check_buckets(buckets: Tensor, chunk_size: int) -> None:
    if not isinstance(buckets, Tensor) or buckets.ndim < 2 or buckets.is_floating_point():
        raise ValueError(f"buckets must be integer ids [..., rounds, n], got "
                         f"{shape_of(buckets) if isinstance(buckets, Tensor) else type(buckets).__name__}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")


def _sorted_ranks(buckets: Tensor) -> Tensor:
    """Position of each token after sorting by (bucket, position): long [..., rounds, n]."""
    n = buckets.shape[-1]
    order = (buckets * n + torch.arange(n, device=buckets.device)).argsort(dim=-1)
    return order.argsort(dim=-1)


def lsh_chunk_mask(buckets: Tensor, chunk_size: int, same_bucket: bool = True, exclude_self: bool = True) -> Tensor:
    """The pairs :func:`lsh_attention` lets meet, as a dense mask: bool [..., n, n].

    ``buckets``: long [..., rounds, n]. In each round the tokens are sorted by bucket (ties by
    position) and cut into chunks of ``chunk_size``; query i may meet key j when j's chunk is i's or
    the one before it (the first chunk has none before it) and, with ``same_bucket``, when they
    share the round's bucket. The mask is the union over rounds. With ``exclude_self``, i meets
    itself only in a row that would otherwise be empty.
    """
    _check_buckets(buckets, chunk_size)
    chunk = _sorted_ranks(buckets) // int(chunk_size)                       # [..., R, n]
    ci, cj = chunk[..., :, None], chunk[..., None, :]
    allowed = (cj <= ci) & (cj >= ci - 1)                                   # [..., R, n, n]
    if same_bucket:
        allowed &= buckets[..., :, None] == buckets[..., None, :]
    allowed = allowed.any(dim=-3)
    if exclude_self:
        eye = torch.eye(buckets.shape[-1], dtype=torch.bool, device=buckets.device)
        others = allowed & ~eye
        allowed = others | (eye & ~others.any(dim=-1, keepdim=True))
    return allowed


def lsh_attention(x: Tensor, v: Tensor, n_buckets: int, chunk_size: int, n_rounds: int = 1, seed: int = 0,
                  same_bucket: bool = True, exclude_self: bool = True, buckets: Tensor | None = None) -> Tensor:
    """Reformer's LSH self-attention, computed chunk by chunk: x [..., n, d], v [..., n, d_v] -> [..., n, d_v].

    Shared query/key: the queries are ``x`` and the keys ``x / |x|``. Each of ``n_rounds`` hash
    rounds (:func:`lsh_buckets` with seed ``seed + r``; or the given ``buckets [..., rounds, n]``)
    sorts the tokens by bucket, cuts them into chunks of ``chunk_size``, and lets each chunk of
    queries attend to its own chunk of keys and the chunk before: scores [..., n / chunk_size,
    chunk_size, 2 chunk_size] instead of [..., n, n]. ``same_bucket`` keeps, within that reach, only
    keys of the query's own bucket. The rounds are merged with each round's log-sum-exp, each score
    lowered by the log of the number of rounds in which the pair met, so that the result equals dense
    attention restricted to :func:`lsh_chunk_mask` (the test proves it).
    """
    _check_qkv(x, x, v)
    n, d = x.shape[-2], x.shape[-1]
    if buckets is None:
        buckets = _lsh_round_buckets(x, n_buckets, n_rounds, seed)
    _check_buckets(buckets, chunk_size)
    if buckets.shape[-1] != n or buckets.shape[:-2] != x.shape[:-2]:
        raise ValueError(f"buckets {shape_of(buckets)} must be [..., rounds, n] for x {shape_of(x)}")
    lead = x.shape[:-2]
    xf, vf = x.reshape(-1, n, d), v.reshape(-1, n, v.shape[-1])
    bf = buckets.reshape(-1, buckets.shape[-2], n)                         # [B, R, n]
    batch, rounds = bf.shape[:2]
    m = int(chunk_size)
    chunks = -(-n // m)
    keys = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rank = _sorted_ranks(bf)                                               # [B, R, n]: token -> sorted place
    chunk_of = rank // m                                                   # [B, R, n]
    b_idx = torch.arange(batch, device=x.device).view(batch, 1, 1)

    def per_token(t: Tensor, idx: Tensor) -> Tensor:                       # t [B, n, ...], idx [B, C, k]
        return t[b_idx, idx]

    outs, lses = [], []
    for r in range(rounds):
        order = rank[:, r].argsort(dim=-1)                                 # sorted place -> token
        valid = torch.arange(chunks * m, device=x.device) < n              # the last chunk may be short
        order = torch.nn.functional.pad(order, (0, chunks * m - n))        # padding places point at token 0,
        q_idx = order.view(batch, chunks, m)                               # [B, C, m]
        q_ok = valid.view(1, chunks, m).expand(batch, -1, -1)
        k_idx = torch.cat([torch.roll(q_idx, 1, dims=1), q_idx], dim=-1)   # [B, C, 2m]: chunk before, own
        k_ok = torch.cat([torch.roll(q_ok, 1, dims=1), q_ok], dim=-1).clone()
        k_ok[:, 0, :m] = False                                             # never used as keys; nothing before chunk 0
        scores = (per_token(xf, q_idx) @ per_token(keys, k_idx).transpose(-2, -1)).float() / math.sqrt(d)
        allowed = k_ok[:, :, None, :].expand_as(scores)                    # [B, C, m, 2m]
        met = torch.zeros_like(scores)             # in how many rounds each pair meets
        for r2 in range(rounds):
            cq, ck = per_token(chunk_of[:, r2], q_idx)[..., None], per_token(chunk_of[:, r2], k_idx)[:, :, None, :]
            pair = (ck <= cq) & (ck >= cq - 1)
            if same_bucket:
                pair = pair & (per_token(bf[:, r2], k_idx)[:, :, None, :] == per_token(bf[:, r2], q_idx)[..., None])
            if r2 == r:
                allowed = allowed & pair
            met += pair
        scores = scores - met.clamp_min(1).log()
        if exclude_self:   # a large finite penalty: itself only when nothing else is allowed in any round
            scores = scores.masked_fill(k_idx[:, :, None, :] == q_idx[..., None], -1e5)
        scores = scores.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)                # [B, C, m, 1]
        out = torch.exp(scores - lse) @ per_token(vf, k_idx).float()       # [B, C, m, d_v]
        place = rank[:, r][:, :, None]                                     # [B, n, 1]: token -> sorted place
        outs.append(out.flatten(1, 2).gather(1, place.expand(-1, -1, out.shape[-1])))   # [B, n, d_v]
        lses.append(lse.flatten(1, 2).gather(1, place))                                   # [B, n, 1]
    weights = torch.softmax(torch.stack(lses), dim=0)                      # [R, B, n, 1]: the rounds' shares
    out = (weights * torch.stack(outs)).sum(dim=0)
    return out.to(v.dtype).reshape(*lead, n, v.shape[-1])


def shuffled_buckets(buckets: Tensor, seed: int = 0) -> Tensor:
    """The same bucket sizes given to random tokens: each round's ids permuted along the last axis.

    buckets [..., n] -> [..., n]: the baseline an LSH must beat (same sizes, so same cost).
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(buckets.shape, generator=g).argsort(dim=-1).to(buckets.device)
    return buckets.gather(-1, perm)


def top_mass_pairs(weights: Tensor, mass: float = 0.9) -> Tensor:
    """bool [..., n_q, n_k]: in each row, the fewest keys whose attention weights add up to ``mass``.

    weights [..., n_q, n_k] (rows summing to 1). Keys are taken in decreasing weight until the running
    sum reaches ``mass``; ties are broken by position.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    sorted_w, order = weights.sort(dim=-1, descending=True, stable=True)
    before = sorted_w.cumsum(dim=-1) - sorted_w                         # mass of the heavier keys
    keep_sorted = before < mass
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def catch_rate(pairs: Tensor, allowed: Tensor) -> float:
    """Share of the True entries of ``pairs`` that ``allowed`` (a mask of the same shape) also allows."""
    if pairs.shape != allowed.shape:
        raise ValueError(f"pairs {shape_of(pairs)} and allowed {shape_of(allowed)} must have one shape")
    total = int(pairs.sum())
    if total == 0:
        raise ValueError("pairs has no True entry: nothing to catch")
    return int((pairs & allowed).sum()) / total


def clustered_vectors(n: int, d: int, n_clusters: int, spread: float = 0.3, scale: float = 4.0,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` vectors [n, d] in ``n_clusters`` groups, and each vector's group (long [n]).

    Group centres are random directions of length ``scale``; each vector is its centre plus Gaussian
    noise of standard deviation ``spread * scale / sqrt(d)`` per coordinate. Tokens of one group
    attend mostly to each other: a stand-in for the structure of a trained model's queries and keys.
    """
    if min(int(n), int(d), int(n_clusters)) < 1:
        raise ValueError(f"n, d and n_clusters must be at least 1, got {n}, {d}, {n_clusters}")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=g)
    centres = scale * centres / centres.norm(dim=-1, keepdim=True)
    group = torch.randint(0, n_clusters, (n,), generator=g)
    noise = torch.randn(n, d, generator=g) * spread * scale / math.sqrt(d)
    return centres[group] + noise, group


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------

def kv_append(cache_k: Tensor, cache_v: Tensor, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
    """Append new keys/values along the sequence axis.

    cache_k, cache_v: [batch, heads, t, d_head]; k_new, v_new: [batch, heads, s, d_head]
    -> ([batch, heads, t + s, d_head], [batch, heads, t + s, d_head]).
    """
    return torch.cat([cache_k, k_new], dim=-2), torch.cat([cache_v, v_new], dim=-2)


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    ``append(k_new, v_new)`` with ``[batch, heads, s, d_head]`` tensors adds ``s`` positions and
    returns all keys and values so far; ``len(cache)`` is the number of positions held; appending
    past ``context_length`` raises a ValueError (a model with learned positions has no vector beyond it).
    """

    def __init__(self, context_length: int):
        if int(context_length) < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        self.context_length = int(context_length)
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    @property
    def length(self) -> int:
        return len(self)

    def append(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        if k_new.ndim != 4 or k_new.shape != v_new.shape:
            raise ValueError(f"k_new and v_new must both be [batch, heads, s, d_head], got "
                             f"{shape_of(k_new)} and {shape_of(v_new)}")
        if self.k is not None and (k_new.shape[:2] != self.k.shape[:2] or k_new.shape[-1] != self.k.shape[-1]):
            raise ValueError(f"new keys {shape_of(k_new)} do not fit the cache {shape_of(self.k)}: "
                             "batch, heads and d_head must match")
        if len(self) + k_new.shape[-2] > self.context_length:
            raise ValueError(f"cache full: holds {len(self)} positions, cannot add {k_new.shape[-2]} more "
                             f"(context_length {self.context_length})")
        if self.k is None:
            self.k, self.v = k_new, v_new
        else:
            self.k, self.v = kv_append(self.k, self.v, k_new, v_new)
        return self.k, self.v

    def __repr__(self) -> str:
        return f"KVCache(length={len(self)}, context_length={self.context_length})"


@torch.no_grad()
def greedy_decode(model, prompt: Tensor, new_tokens: int, use_cache: bool = True) -> Tensor:
    """Greedy decoding of ``new_tokens`` tokens after ``prompt`` (long [batch, t]) -> [batch, t + new_tokens].

    Without a cache every step runs the model over the whole sequence so far (O(n^2) work over a
    generation); with a cache each step processes one token against the stored keys and values.
    The prompt is moved to the model's device, and the result is returned there.
    """
    if prompt.shape[1] + new_tokens > model.context_length:
        raise ValueError(f"prompt {prompt.shape[1]} + {new_tokens} new tokens exceed the context "
                         f"length {model.context_length}")
    prompt = prompt.to(model_device(model))
    idx = prompt
    if not use_cache:
        for _ in range(new_tokens):
            nxt = model(idx)[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
    caches = [KVCache(model.context_length) for _ in model.blocks]
    logits = model(prompt, caches=caches)                         # prefill: the whole prompt at once
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
        if idx.shape[1] < prompt.shape[1] + new_tokens:
            logits = model(nxt, caches=caches)                    # one new token per step
    return idx



@torch.no_grad()
def decode_step_times(model, lengths, use_cache: bool = True, min_run_time: float = 0.05, seed: int = 0) -> list[float]:
    """Milliseconds of one generation step after ``L`` tokens, for each ``L`` in ``lengths`` (median of
    repeated runs, :func:`course.bench.benchmark`, on the model's device).

    Without a cache the step runs the model over all ``L + 1`` tokens; with one it runs the model over
    the newest token only, against caches holding ``L`` positions (filled beforehand, not timed, and
    put back to ``L`` positions before every run). Token ids are random (seeded): the time does not
    depend on them.
    """
    from .bench import benchmark
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1 or max(lengths) + 1 > model.context_length:
        raise ValueError(f"lengths must lie in [1, {model.context_length - 1}] (context length "
                         f"{model.context_length}), got {lengths}")
    device = model_device(model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, max(lengths) + 1), generator=g).to(device)
    times = []
    for n in lengths:
        if not use_cache:
            times.append(benchmark(lambda: model(ids[:, :n + 1]), warmup=1, min_run_time=min_run_time,
                                   device=device).median_ms)
            continue
        caches = [KVCache(model.context_length) for _ in model.blocks]
        model(ids[:, :n], caches=caches)                                   # prefill: not timed
        filled = [(c.k, c.v) for c in caches]

        def step():
            for c, (k, v) in zip(caches, filled):                          # back to n positions
                c.k, c.v = k, v
            return model(ids[:, n:n + 1], caches=caches)
        times.append(benchmark(step, warmup=1, min_run_time=min_run_time, device=device).median_ms)
    return times
