"""Efficient attention, built from scratch (lesson 11).

- :func:`naive_attention`: softmax(QK^T/sqrt(d)) V that materialises the n x n scores, the baseline.
- :func:`attention_flops`: the floating-point operations attention does, to turn times into TFLOP/s.
- :func:`online_softmax` and :func:`online_softmax_update`: softmax in one streaming pass over blocks,
  keeping only a running maximum ``m`` and a running sum ``l`` (the idea behind FlashAttention).
- :func:`flash_attention_torch`: tiled attention in plain PyTorch that never forms the n x n matrix.
- :func:`naive_attention_bytes`, :func:`tiled_attention_bytes` and :class:`TensorMemoryTracker`:
  what each algorithm keeps in memory, counted and measured.
- Sparse patterns as masks: :func:`sliding_window_mask` (Longformer), :func:`bigbird_mask` (BigBird),
  :func:`lsh_buckets` / :func:`lsh_mask` (Reformer), with :func:`mask_density` as their cost.
- :class:`KVCache` and :func:`greedy_decode`: autoregressive decoding that reuses the keys and values
  of earlier tokens instead of recomputing them (the course's GPT takes one cache per block:
  ``model(new_ids, caches=caches)``).

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
    "naive_attention_bytes", "tiled_attention_bytes", "TensorMemoryTracker", "measure_peak_bytes",
    "sliding_window_mask", "bigbird_mask", "lsh_buckets", "lsh_mask", "mask_density",
    "kv_append", "KVCache", "greedy_decode", "fit_power_law",
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

    Forward: two matrix products (q k^T and weights v), each 2 * seq * seq * d multiply-adds per
    head: ``4 * batch * heads * seq^2 * d``. Causal attention needs only half of them (the
    convention of FlashAttention's benchmarks). ``backward=True`` returns forward + backward, where
    the backward does 2.5x the forward's work (five matrix products instead of two): 3.5x in all.
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


def flash_attention_torch(q: Tensor, k: Tensor, v: Tensor, block_size: int = 64, causal: bool = False,
                          scale: float | None = None, block_size_k: int | None = None) -> Tensor:
    """FlashAttention's forward pass in plain PyTorch: tiles of queries against tiles of keys.

    q: [..., n_q, d], k: [..., n_k, d], v: [..., n_k, d_v] -> [..., n_q, d_v].
    The largest temporary is one tile of scores [..., block_size, block_size_k]; the n_q x n_k
    matrix is never formed. Statistics and accumulator are kept in float32. ``causal=True`` is
    top-left aligned (query i sees keys 0..i) and skips the tiles wholly above the diagonal.
    """
    _check_qkv(q, k, v)
    if block_size < 1 or (block_size_k is not None and block_size_k < 1):
        raise ValueError(f"block sizes must be at least 1, got {block_size}, {block_size_k}")
    bk = block_size_k or block_size
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for qs in range(0, n_q, block_size):
        q_tile = q[..., qs:qs + block_size, :]
        rows = q_tile.shape[-2]
        m, l, acc = init_online_state(q_tile, v.shape[-1])
        k_end = min(n_k, qs + rows) if causal else n_k        # keys after the last query are all masked
        for ks in range(0, k_end, bk):
            s = (q_tile @ k[..., ks:ks + bk, :].transpose(-2, -1)).float() * scale
            if causal and ks + s.shape[-1] - 1 > qs:         # the tile crosses the diagonal
                qi = torch.arange(qs, qs + rows, device=q.device)[:, None]
                kj = torch.arange(ks, ks + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(kj > qi, float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, s, v[..., ks:ks + bk, :].float())
        # Rows with no allowed key (only when n_q > n_k is impossible here) would give 0/0: guard anyway.
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


def bigbird_mask(n: int, window: int, num_global: int, num_random: int, seed: int = 0) -> Tensor:
    """BigBird's pattern: bool [n, n] = sliding window | global tokens | random links.

    The first ``num_global`` tokens attend to everything and everything attends to them; each query
    also gets ``num_random`` keys drawn at random (seeded, so the picture is reproducible).
    """
    if num_global > n:
        raise ValueError(f"num_global={num_global} is more than the n={n} tokens")
    _check_positive(num_global=num_global, num_random=num_random)
    mask = sliding_window_mask(n, window)
    mask[:num_global, :] = True
    mask[:, :num_global] = True
    if num_random:
        g = torch.Generator().manual_seed(seed)
        picks = torch.rand(n, n, generator=g).argsort(dim=-1)[:, :min(num_random, n)]
        mask[torch.arange(n)[:, None], picks] = True
    return mask


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
