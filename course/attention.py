"""Attention, built from scratch: scaled dot-product attention, masks and multi-head attention.

Lessons 03 (self-attention) and 05 (multi-head attention) write each piece here in the open;
later lessons import the finished pieces from this module.

Conventions used everywhere in the course:

- Tensors are **batch first**: ``[batch, seq, d_model]``; with heads ``[batch, heads, seq, d_head]``.
- A **mask is boolean and True where attention is ALLOWED** (like the ``attn_mask`` of
  :func:`torch.nn.functional.scaled_dot_product_attention`). ``torch.nn.MultiheadAttention`` uses the
  opposite convention (True = NOT allowed); :func:`to_torch_mha_mask` translates.
- A query row whose mask allows **no key at all** gets all-zero weights and an all-zero output
  (instead of the NaN that ``softmax`` of a row of ``-inf`` gives). PyTorch's own
  ``scaled_dot_product_attention`` makes the same choice.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn

from course.utils import shape_of
from course.weights import MODULE_QUESTION, Step, chunk, load_plan

if TYPE_CHECKING:
    from course.efficient import KVCache

__all__ = [
    "attention_scores",
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "to_torch_mha_mask",
    "to_torch_key_padding_mask",
    "split_heads",
    "merge_heads",
    "split_heads_einops",
    "merge_heads_einops",
    "MultiHeadAttention",
    "MultiHeadAttentionEinops",
    "FusedQKVAttention",
    "mha_parameter_count",
    "check_torch_mha",
    "torch_mha_plan",
    "load_from_torch_mha",
    "copy_to_torch_mha",
    "fused_from_mha",
]


# ----------------------------------------------------------------------------- checks on inputs

def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError, naming the shapes, unless q, k, v fit together for attention."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions [..., seq, d], got shape {shape_of(t)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension d_k: q {shape_of(q)}, k {shape_of(k)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys (dim -2): k {shape_of(k)}, v {shape_of(v)}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the leading (batch/head) dimensions of q, k, v do not broadcast: "
                         f"q {shape_of(q)}, k {shape_of(k)}, v {shape_of(v)}") from None


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size) -> None:
    """Raise ValueError unless ``mask`` is boolean and broadcasts to ``scores_shape``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a boolean torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool (True = attention allowed), got {mask.dtype}; "
                         "for a 0/1 mask use `mask.bool()`")
    try:
        target = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        target = None
    if target != scores_shape:
        raise ValueError(f"mask of shape {shape_of(mask)} does not broadcast to the scores' shape "
                         f"{tuple(scores_shape)} [..., seq_q, seq_k]")


# ----------------------------------------------------------------------------- attention itself

def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Scaled similarity of every query with every key.

    q: [..., seq_q, d_k], k: [..., seq_k, d_k] -> scores [..., seq_q, seq_k] = q @ k^T / sqrt(d_k)
    (or ``* scale`` when ``scale`` is given).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension d_k: q {shape_of(q)}, k {shape_of(k)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q @ k.transpose(-2, -1)) * scale


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.

    q: [..., seq_q, d_k], k: [..., seq_k, d_k], v: [..., seq_k, d_v]
    mask: bool, True where query i may attend to key j, broadcastable to [..., seq_q, seq_k]
    returns (output [..., seq_q, d_v], weights [..., seq_q, seq_k])

    Masked scores become -inf before the softmax, so their weights are exactly 0 and each
    row of weights sums to 1. A row with no allowed key gets weights 0 and output 0 (not NaN).
    ``scale`` replaces 1/sqrt(d_k); ``dropout`` (e.g. an ``nn.Dropout``) is applied to the weights
    before they multiply ``v``; the returned weights are the ones before dropout.
    """
    _check_qkv(q, k, v)
    scores = attention_scores(q, k, scale)
    weights_mask = None
    if mask is not None:
        _check_mask(mask, scores.shape)
        scores = scores.masked_fill(~mask, float("-inf"))
        # Rows where nothing is allowed: softmax of all -inf is NaN. Give such rows harmless
        # finite scores for the softmax, then zero their weights afterwards.
        row_has_key = mask.any(dim=-1, keepdim=True)
        if not bool(row_has_key.all()):
            scores = scores.masked_fill(~row_has_key, 0.0)
            weights_mask = row_has_key
    weights = torch.softmax(scores, dim=-1)
    if weights_mask is not None:
        weights = weights.masked_fill(~weights_mask, 0.0)
    mixed = dropout(weights) if dropout is not None else weights
    return mixed @ v, weights


# ----------------------------------------------------------------------------- masks

def causal_mask(seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """bool [seq_len, seq_len], True on and below the diagonal: query i may see keys 0..i."""
    if int(seq_len) < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def padding_mask(
    lengths_or_pad: torch.Tensor | Sequence[int],
    seq_len: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask out padding keys: returns bool [batch, 1, 1, seq_k], True at real (non-pad) keys.

    ``lengths_or_pad`` is either the real lengths (ints, [batch]; ``seq_len``, the padded length
    seq_k, defaults to the longest) or a boolean ``pad`` tensor [batch, seq_k] that is True AT
    PADDING (the ``key_padding_mask`` convention of ``torch.nn.MultiheadAttention``). The result
    broadcasts against scores [batch, heads, seq_q, seq_k].
    """
    if isinstance(lengths_or_pad, torch.Tensor) and lengths_or_pad.dtype == torch.bool:
        if lengths_or_pad.ndim != 2:
            raise ValueError(f"a boolean pad tensor must be [batch, seq_k], got shape {shape_of(lengths_or_pad)}")
        if seq_len is not None and seq_len != lengths_or_pad.shape[1]:
            raise ValueError(f"seq_len={seq_len} disagrees with the pad tensor's shape {shape_of(lengths_or_pad)}")
        allowed = ~lengths_or_pad
        if device is not None:
            allowed = allowed.to(device)
    else:
        lengths = torch.as_tensor(lengths_or_pad, device=device)
        if lengths.ndim != 1 or lengths.is_floating_point():
            raise ValueError(f"lengths must be a 1-D sequence of ints [batch], got shape {shape_of(lengths)} "
                             f"and dtype {lengths.dtype}")
        if lengths.numel() and int(lengths.min()) < 0:
            raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
        longest = int(lengths.max()) if lengths.numel() else 0
        seq_len = longest if seq_len is None else seq_len
        if longest > seq_len:
            raise ValueError(f"a length ({longest}) is longer than seq_len={seq_len}")
        allowed = torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]
    return allowed[:, None, None, :]


def to_torch_mha_mask(mask: torch.Tensor) -> torch.Tensor:
    """Translate a course mask (True = allowed) into torch.nn.MultiheadAttention's (True = NOT allowed).

    Works for ``attn_mask`` ([seq_q, seq_k]) and, after squeezing the [batch, 1, 1, seq_k] padding
    mask to [batch, seq_k], for ``key_padding_mask``.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool, got {mask.dtype}")
    return ~mask


def to_torch_key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """Course padding mask [batch, 1, 1, seq_k] (True = real token) -> torch's key_padding_mask [batch, seq_k] (True = pad)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if mask.ndim == 4 and mask.shape[1] == mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if mask.ndim != 2:
        raise ValueError(f"expected a padding mask [batch, 1, 1, seq_k] or [batch, seq_k], got shape {shape_of(mask)}")
    return ~mask


# ----------------------------------------------------------------------------- heads

def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[batch, seq, d_model] -> [batch, heads, seq, d_head] with view + transpose.

    Head h gets the features h*d_head ... (h+1)*d_head - 1 of every position.
    """
    if x.ndim != 3:
        raise ValueError(f"split_heads expects [batch, seq, d_model], got shape {shape_of(x)}")
    batch, seq, d_model = x.shape
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} (shape {shape_of(x)}) is not divisible by num_heads={num_heads}")
    return x.view(batch, seq, num_heads, d_model // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, d_head] -> [batch, seq, heads * d_head]: the inverse of split_heads."""
    if x.ndim != 4:
        raise ValueError(f"merge_heads expects [batch, heads, seq, d_head], got shape {shape_of(x)}")
    batch, heads, seq, d_head = x.shape
    # transpose makes the tensor non-contiguous, so .view needs .contiguous() first (or use reshape).
    return x.transpose(1, 2).contiguous().view(batch, seq, heads * d_head)


def split_heads_einops(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The same as :func:`split_heads`, written with einops."""
    if x.ndim != 3 or x.shape[-1] % num_heads:
        raise ValueError(f"split_heads_einops expects [batch, seq, d_model] with d_model divisible by "
                         f"num_heads={num_heads}, got shape {shape_of(x)}")
    return rearrange(x, "b s (h d) -> b h s d", h=num_heads)


def merge_heads_einops(x: torch.Tensor) -> torch.Tensor:
    """The same as :func:`merge_heads`, written with einops."""
    if x.ndim != 4:
        raise ValueError(f"merge_heads_einops expects [batch, heads, seq, d_head], got shape {shape_of(x)}")
    return rearrange(x, "b h s d -> b s (h d)")


def _check_mha_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, d_model: int) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.ndim != 3 or t.shape[-1] != d_model:
            raise ValueError(f"{name} must be [batch, seq, d_model={d_model}] (batch first), got shape {shape_of(t)}")
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(f"query, key and value must have the same batch size: query {shape_of(query)}, "
                         f"key {shape_of(key)}, value {shape_of(value)}")
    if key.shape[1] != value.shape[1]:
        raise ValueError(f"key and value must have the same length: key {shape_of(key)}, value {shape_of(value)}")


def _heads_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 3-D mask [batch, seq_q, seq_k] gets a heads axis so it broadcasts as [batch, 1, seq_q, seq_k]."""
    if mask is not None and mask.ndim == 3:
        return mask[:, None]
    return mask


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     dropout_p: float) -> torch.Tensor:
    """What :func:`scaled_dot_product_attention` computes (output only, no weights), by PyTorch's
    ``torch.nn.functional.scaled_dot_product_attention``: one fused kernel, no [seq_q, seq_k] weights
    kept for the backward pass. Same mask convention (True = allowed); a row with no allowed key
    gives 0 there too. ``dropout_p`` drops weights as ``nn.Dropout`` would (0 outside training)."""
    _check_qkv(q, k, v)
    if mask is not None:
        _check_mask(mask, torch.Size((*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])))
    return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (batch first).

    forward(query [batch, seq_q, d_model], key [batch, seq_k, d_model], value [batch, seq_k, d_model],
            mask=None, need_weights=False)
    -> output [batch, seq_q, d_model], or (output, weights [batch, heads, seq_q, seq_k]) if need_weights.

    ``mask`` is boolean, True = allowed, and broadcasts to [batch, heads, seq_q, seq_k]: a causal
    mask [seq_q, seq_k], a padding mask [batch, 1, 1, seq_k] (see :func:`padding_mask`), or a
    per-example mask [batch, seq_q, seq_k] (a heads axis is added).

    ``cache`` (a :class:`course.efficient.KVCache`, lesson 11) holds the keys and values of earlier
    positions: the new ones are appended to it and the queries attend to all of them, so ``seq_k``
    counts the cached positions too.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.d_model, self.num_heads, self.d_head = d_model, num_heads, d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, seq, d_model] -> [batch, heads, seq, d_head]."""
        return split_heads(x, self.num_heads)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, heads, seq, d_head] -> [batch, seq, d_model]."""
        return merge_heads(x)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, need_weights: bool = False, cache: KVCache | None = None):
        _check_mha_inputs(query, key, value, self.d_model)
        q = self.split(self.q_proj(query))   # [batch, heads, seq_q, d_head]
        k = self.split(self.k_proj(key))     # [batch, heads, seq_k, d_head]
        v = self.split(self.v_proj(value))   # [batch, heads, seq_k, d_head]
        if cache is not None:                # earlier positions' keys and values first (lesson 11)
            k, v = cache.append(k, v)
        if not need_weights:                 # the fast path: PyTorch's fused kernel, same result
            out = _fused_attention(q, k, v, _heads_mask(mask), self.dropout.p if self.training else 0.0)
            return self.out_proj(self.merge(out))
        out, weights = scaled_dot_product_attention(q, k, v, _heads_mask(mask),
                                                    dropout=self.dropout if self.training else None)
        out = self.out_proj(self.merge(out))  # [batch, seq_q, d_model]
        return out, weights

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, d_head={self.d_head}"


class MultiHeadAttentionEinops(MultiHeadAttention):
    """The same module (same parameters, same state_dict) with every reshape written in einops."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, need_weights: bool = False):
        _check_mha_inputs(query, key, value, self.d_model)
        h = self.num_heads
        q = rearrange(self.q_proj(query), "b s (h d) -> b h s d", h=h)
        k = rearrange(self.k_proj(key), "b s (h d) -> b h s d", h=h)
        v = rearrange(self.v_proj(value), "b s (h d) -> b h s d", h=h)
        out, weights = scaled_dot_product_attention(q, k, v, _heads_mask(mask),
                                                    dropout=self.dropout if self.training else None)
        out = self.out_proj(rearrange(out, "b h s d -> b s (h d)"))
        return (out, weights) if need_weights else out


class FusedQKVAttention(nn.Module):
    """Self-attention with one Linear d_model -> 3*d_model for q, k and v together (as in GPT-2).

    forward(x [batch, seq, d_model], mask=None, need_weights=False) -> like MultiHeadAttention.
    One big matrix product instead of three small ones; the rows of ``qkv_proj.weight`` are the
    q, k and v projections stacked in that order (the layout of torch's ``in_proj_weight``).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.d_model, self.num_heads, self.d_head = d_model, num_heads, d_model // num_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False):
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [batch, seq, d_model={self.d_model}], got shape {shape_of(x)}")
        qkv = rearrange(self.qkv_proj(x), "b s (three h d) -> three b h s d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)              # each [batch, heads, seq, d_head]
        out, weights = scaled_dot_product_attention(q, k, v, _heads_mask(mask),
                                                    dropout=self.dropout if self.training else None)
        out = self.out_proj(merge_heads(out))
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, d_head={self.d_head}"


def mha_parameter_count(d_model: int, bias: bool = True) -> int:
    """4 * d_model^2 weights (q, k, v, out) + 4 * d_model biases. The number of heads does not matter."""
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


# ----------------------------------------------------------------------------- weights from/to PyTorch

def check_torch_mha(ours: nn.Module, theirs: nn.MultiheadAttention, where: str = "") -> None:
    """Raise ValueError (prefixed by ``where``) unless ours and torch's module have the same structure."""
    if not isinstance(theirs, nn.MultiheadAttention):
        raise ValueError(f"{where}expected a torch.nn.MultiheadAttention, got {type(theirs).__name__}")
    if not isinstance(ours, MultiHeadAttention):
        raise ValueError(f"{where}expected a course MultiHeadAttention, got {type(ours).__name__}")
    if theirs.embed_dim != ours.d_model or theirs.num_heads != ours.num_heads:
        raise ValueError(f"{where}size mismatch: torch module has embed_dim={theirs.embed_dim}, num_heads={theirs.num_heads}; "
                         f"ours has d_model={ours.d_model}, num_heads={ours.num_heads}")
    if theirs.in_proj_weight is None:
        raise ValueError(f"{where}torch module was built with kdim/vdim different from embed_dim "
                         "(separate q_proj_weight/k_proj_weight/v_proj_weight); ours needs kdim = vdim = d_model")
    if theirs.bias_k is not None or theirs.add_zero_attn:
        raise ValueError(f"{where}torch module uses add_bias_kv/add_zero_attn, which ours does not have")


def torch_mha_plan(ours: str = "", theirs: str = "") -> list[Step]:
    """How our attention's parameters come from a ``torch.nn.MultiheadAttention``'s (a weight plan,
    see :mod:`course.weights`); ``ours`` and ``theirs`` prefix the names (``"self_attn."``).

    torch keeps q, k, v stacked in one ``in_proj_weight`` [3*d_model, d_model] (and ``in_proj_bias``);
    each third goes to ``q_proj``, ``k_proj``, ``v_proj``; ``out_proj`` maps one to one.
    """
    plan = []
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        plan += [Step(f"{ours}{name}.weight", f"{theirs}in_proj_weight", chunk(i, 3, dim=0)),
                 Step(f"{ours}{name}.bias", f"{theirs}in_proj_bias", chunk(i, 3, dim=0), optional=True)]
    plan += [Step(f"{ours}out_proj.weight", f"{theirs}out_proj.weight"),
             Step(f"{ours}out_proj.bias", f"{theirs}out_proj.bias", optional=True)]
    return plan


def load_from_torch_mha(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> MultiHeadAttention:
    """Copy the weights of a ``torch.nn.MultiheadAttention`` into ours (in place); return ours.

    Follows :func:`torch_mha_plan`; a parameter that does not fit raises
    :class:`course.weights.WeightMismatchError` naming it.
    """
    check_torch_mha(ours, theirs)
    return load_plan(ours, theirs.state_dict(), torch_mha_plan(), question=MODULE_QUESTION)


def copy_to_torch_mha(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """The other direction: copy our weights into a ``torch.nn.MultiheadAttention`` (in place); return it."""
    check_torch_mha(ours, theirs)
    reverse = [Step(step.source, step.target, into=step.transform, optional=step.optional) for step in torch_mha_plan()]
    return load_plan(theirs, ours.state_dict(), reverse, question=MODULE_QUESTION)


def fused_from_mha(mha: MultiHeadAttention) -> FusedQKVAttention:
    """A FusedQKVAttention computing exactly what ``mha`` computes for self-attention (weights copied)."""
    bias = mha.q_proj.bias is not None
    fused = FusedQKVAttention(mha.d_model, mha.num_heads, dropout=mha.dropout.p, bias=bias)
    fused.to(device=mha.q_proj.weight.device, dtype=mha.q_proj.weight.dtype)
    with torch.no_grad():
        fused.qkv_proj.weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight], dim=0))
        if bias:
            fused.qkv_proj.bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias], dim=0))
        fused.out_proj.load_state_dict(mha.out_proj.state_dict())
    return fused
