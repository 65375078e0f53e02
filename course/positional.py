"""Positional information for attention: sinusoidal, learned and rotary (RoPE) encodings.

Attention on its own treats a sequence as a set: permute the tokens and the outputs permute the
same way (:func:`permutation_gap` measures it). Position has to be put in by hand, and there are
two families:

- *absolute* encodings, added to the token embeddings before the first block:
  :func:`sinusoidal_encoding` / :class:`SinusoidalPositionalEncoding` (fixed, "Attention is all
  you need") and :class:`LearnedPositionalEmbedding` (a trained table, as in BERT and GPT-2);
- *rotary* encodings (RoPE, Su et al. 2021), applied to queries and keys inside attention:
  :func:`apply_rope` / :class:`RotaryEmbedding`. They rotate each pair of dimensions by an angle
  proportional to the position, so ``q_m . k_n`` depends only on ``m - n``. Two layouts of the pairs
  exist (adjacent pairs, or split halves as in Hugging Face's Llama); they differ by a fixed
  permutation of the dimensions (:func:`rope_halves_permutation`), which a checkpoint carries in the
  order of its query and key projection rows (:func:`permute_rope_rows`).

Both use the same frequencies ``omega_i = base ** (-2i / d)`` for the pair of dimensions
``(2i, 2i + 1)``, and both need an even ``d``: every frequency owns one sine and one cosine (one
2-D rotation). An odd ``d`` is rejected with a ``ValueError`` rather than silently padded.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "sinusoidal_frequencies",
    "sinusoidal_encoding",
    "relative_offset_matrix",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "rope_angles",
    "apply_rope",
    "RotaryEmbedding",
    "rope_halves_permutation",
    "permute_rope_rows",
    "permutation_gap",
    "EncodingEntry",
    "encoding_entry",
    "describe_encoding_entry",
]


def _check_even(d: int, name: str = "d_model") -> None:
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise ValueError(f"{name} must be a positive integer, got {d!r}")
    if d % 2:
        raise ValueError(f"{name} must be even (each frequency owns a sine and a cosine, one 2-D rotation), got {d}")


def sinusoidal_frequencies(d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The angular frequencies ``omega_i = base ** (-2i / d_model)`` for ``i = 0 .. d_model/2 - 1``.

    Returns ``[d_model // 2]``, from 1 (wavelength 2*pi) down to almost ``1 / base``
    (wavelength almost ``2 * pi * base``).
    """
    _check_even(d_model)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    return torch.pow(float(base), -two_i / d_model).to(dtype)


def sinusoidal_encoding(num_positions: int, d_model: int, base: float = 10000.0,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed encodings of "Attention is all you need".

    ``PE[pos, 2i] = sin(pos / base ** (2i / d_model))`` and
    ``PE[pos, 2i + 1] = cos(pos / base ** (2i / d_model))``.

    Returns ``[num_positions, d_model]`` for positions ``0 .. num_positions - 1``. Computed in
    float64 and then cast to ``dtype``, so large positions stay accurate. ``d_model`` must be even.
    """
    if not isinstance(num_positions, int) or isinstance(num_positions, bool) or num_positions < 0:
        raise ValueError(f"num_positions must be a non-negative integer, got {num_positions!r}")
    omega = sinusoidal_frequencies(d_model, base, dtype=torch.float64)         # [d/2]
    pos = torch.arange(num_positions, dtype=torch.float64)                    # [n]
    angles = pos[:, None] * omega[None, :]                                    # [n, d/2]
    pairs = torch.stack([angles.sin(), angles.cos()], dim=-1)                 # [n, d/2, 2]
    return rearrange(pairs, "n half two -> n (half two)").to(dtype)           # [n, d]


def relative_offset_matrix(k: int | float, d_model: int, base: float = 10000.0,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """The matrix ``M_k`` with ``PE(pos + k) = M_k @ PE(pos)`` for every position ``pos``.

    Moving ``k`` positions along turns each (sin, cos) pair by the angle ``k * omega_i``::

        [sin((p+k)w)]   [ cos(kw)  sin(kw)] [sin(pw)]
        [cos((p+k)w)] = [-sin(kw)  cos(kw)] [cos(pw)]

    so ``M_k`` is block-diagonal with one 2x2 rotation per frequency and does not depend on ``pos``.
    Returns ``[d_model, d_model]``. Acting on rows, ``PE[p + k] = PE[p] @ M_k.T``.
    """
    omega = sinusoidal_frequencies(d_model, base, dtype=torch.float64)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    blocks = [torch.stack([torch.stack([ci, si]), torch.stack([-si, ci])]) for ci, si in zip(c, s)]
    return torch.block_diag(*blocks).to(dtype)


def _check_embeddings(x: Tensor, d_model: int, context_length: int, start: int, what: str) -> None:
    if x.dim() < 2 or x.shape[-1] != d_model:
        raise ValueError(f"{what} expects x of shape [..., seq, {d_model}], got {tuple(x.shape)}")
    if start < 0 or start + x.shape[-2] > context_length:
        raise ValueError(f"{what}: positions {start}..{start + x.shape[-2] - 1} do not fit "
                         f"context_length={context_length} (x has shape {tuple(x.shape)})")


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encodings to token embeddings (no trainable parameters).

    ``forward(x: [batch, seq, d_model], start=0) -> [batch, seq, d_model]`` returns
    ``dropout(x + PE[start : start + seq])``.
    """

    def __init__(self, d_model: int, context_length: int = 4096, base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.d_model, self.context_length = d_model, context_length
        self.register_buffer("pe", sinusoidal_encoding(context_length, d_model, base), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        _check_embeddings(x, self.d_model, self.context_length, start, "SinusoidalPositionalEncoding")
        return self.dropout(x + self.pe[start:start + x.shape[-2]].to(x.dtype))


class LearnedPositionalEmbedding(nn.Module):
    """A trained table of one vector per position (BERT, GPT-2), added to token embeddings.

    ``forward(x: [batch, seq, d_model], start=0) -> [batch, seq, d_model]``. The table
    ``embedding.weight: [context_length, d_model]`` starts as N(0, 0.02^2); positions beyond
    ``context_length`` have no vector, which is this scheme's hard length limit.
    """

    def __init__(self, context_length: int, d_model: int, dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.d_model, self.context_length = d_model, context_length
        self.embedding = nn.Embedding(context_length, d_model)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        _check_embeddings(x, self.d_model, self.context_length, start, "LearnedPositionalEmbedding")
        positions = torch.arange(start, start + x.shape[-2], device=x.device)
        return self.dropout(x + self.embedding(positions).to(x.dtype))


def rope_angles(positions: Tensor, d: int, base: float = 10000.0, omega: Tensor | None = None) -> Tensor:
    """Rotation angles ``positions[..., None] * omega``: ``[...]`` -> ``[..., d // 2]`` (float32).

    ``omega``: the ``[d // 2]`` frequencies, when they must be rounded as another implementation rounds them
    (lesson 12); by default :func:`sinusoidal_frequencies` ``(d, base)``."""
    if omega is None:
        omega = sinusoidal_frequencies(d, base)
    elif tuple(omega.shape) != (d // 2,):
        raise ValueError(f"omega must hold d // 2 = {d // 2} frequencies, got shape {tuple(omega.shape)}")
    return positions.to(torch.float32)[..., None] * omega.to(device=positions.device, dtype=torch.float32)


def apply_rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0,
               interleaved: bool = True, omega: Tensor | None = None) -> Tensor:
    """Rotary position embedding: rotate each pair of dimensions by ``position * omega_i``.

    ``x: [..., seq, d]`` (``d`` even), typically queries or keys ``[batch, heads, seq, d_head]``.
    ``positions``: ``None`` for ``0 .. seq-1``, or a tensor whose shape broadcasts to
    ``x.shape[:-1]`` (e.g. ``[seq]`` or ``[batch, 1, seq]``). Returns a tensor shaped like ``x``.

    ``interleaved=True`` pairs dimensions ``(2i, 2i+1)`` as in the RoPE paper (the complex-number
    view: ``x_{2i} + j x_{2i+1}`` times ``exp(j * pos * omega_i)``). ``interleaved=False`` pairs
    ``(i, i + d/2)``, the "rotate half" layout of GPT-NeoX and Hugging Face's Llama. ``omega``: see
    :func:`rope_angles`.
    """
    if x.dim() < 2:
        raise ValueError(f"apply_rope expects x of shape [..., seq, d], got {tuple(x.shape)}")
    seq, d = x.shape[-2], x.shape[-1]
    _check_even(d, "the last dimension of x")
    if positions is None:
        positions = torch.arange(seq, device=x.device)
    elif not isinstance(positions, Tensor):
        positions = torch.as_tensor(positions, device=x.device)
    try:
        fits = torch.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"positions of shape {tuple(positions.shape)} do not broadcast to x.shape[:-1] = "
                         f"{tuple(x.shape[:-1])} (x has shape {tuple(x.shape)})")
    angles = rope_angles(positions.to(x.device), d, base, omega)              # [..., seq, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if interleaved:
        pairs = rearrange(x, "... (half two) -> ... half two", two=2)
        x0, x1 = pairs[..., 0], pairs[..., 1]                                 # [..., seq, d/2]
    else:
        x0, x1 = x[..., : d // 2], x[..., d // 2:]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    if interleaved:
        return rearrange(torch.stack([r0, r1], dim=-1), "... half two -> ... (half two)")
    return torch.cat([r0, r1], dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE as a module (no trainable parameters): ``forward(x: [..., seq, d_head], positions=None)``.

    Use it on queries and keys after the projections and head split, before the dot products:
    ``q, k = rope(q), rope(k)``. Values are not rotated.
    """

    def __init__(self, d_head: int, base: float = 10000.0, interleaved: bool = True):
        super().__init__()
        _check_even(d_head, "d_head")
        self.d_head, self.base, self.interleaved = d_head, base, interleaved

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.d_head:
            raise ValueError(f"RotaryEmbedding(d_head={self.d_head}) got x of shape {tuple(x.shape)}")
        return apply_rope(x, positions, self.base, self.interleaved)

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, base={self.base:g}, interleaved={self.interleaved}"


def rope_halves_permutation(d: int) -> Tensor:
    """The dimension order that turns RoPE's interleaved layout into the split-halves one: ``[d]`` (long).

    With ``perm = rope_halves_permutation(d)``, ``x[..., perm]`` puts dimension ``2i`` at place ``i`` and
    dimension ``2i + 1`` at place ``i + d/2``: the interleaved pair ``(2i, 2i+1)`` becomes the split-halves
    pair ``(i, i + d/2)``, rotated at the same frequency ``omega_i``. So, for any ``x: [..., seq, d]``::

        apply_rope(x[..., perm], interleaved=False) == apply_rope(x, interleaved=True)[..., perm]

    ``torch.argsort(perm)`` is the inverse (split halves back to interleaved). ``d`` must be even.
    """
    _check_even(d, "d")
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def permute_rope_rows(weight: Tensor, num_heads: int, to_halves: bool = True) -> Tensor:
    """Reorder a query or key projection for the other RoPE layout, head by head.

    ``weight: [num_heads * d_head, d_in]`` (``nn.Linear``'s layout: one row per output dimension; a bias
    ``[num_heads * d_head]`` works too). Row ``r`` of head ``h`` produces dimension ``r`` of that head's
    query, so reordering the rows within each head by :func:`rope_halves_permutation` (``to_halves=True``)
    or its inverse (``to_halves=False``) gives a projection whose queries are the old ones with their
    dimensions permuted. A model that applies split-halves RoPE to the new projection computes exactly
    the attention scores that interleaved RoPE computes with the old one (and the reverse). Values and the
    output projection are not touched. Returns a new tensor shaped like ``weight``.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive whole number, got {num_heads!r}")
    if weight.dim() not in (1, 2) or weight.shape[0] % num_heads:
        raise ValueError(f"permute_rope_rows expects a weight [num_heads * d_head, d_in] or a bias [num_heads * d_head] "
                         f"with num_heads={num_heads} dividing its first axis, got shape {tuple(weight.shape)}")
    d_head = weight.shape[0] // num_heads
    perm = rope_halves_permutation(d_head).to(weight.device)
    if not to_halves:
        perm = torch.argsort(perm)
    per_head = weight.reshape(num_heads, d_head, *weight.shape[1:])
    return per_head[:, perm].reshape(weight.shape).clone()


def permutation_gap(f: Callable[[Tensor], Tensor], x: Tensor, perm: Tensor) -> Tensor:
    """How far ``f`` is from permutation-equivariant along the sequence axis, for one permutation.

    ``x: [batch, seq, d]``, ``perm: [seq]`` (a permutation of ``0 .. seq-1``), ``f`` maps
    ``[batch, seq, d] -> [batch, seq, d_out]``. Returns a 0-d tensor:
    ``max |f(x[:, perm]) - f(x)[:, perm]|``, zero (up to rounding) exactly when permuting the
    input permutes the output the same way.
    """
    if x.dim() != 3 or perm.dim() != 1 or perm.shape[0] != x.shape[1]:
        raise ValueError(f"permutation_gap expects x: [batch, seq, d] and perm: [seq], got x {tuple(x.shape)} "
                         f"and perm {tuple(perm.shape)}")
    return (f(x[:, perm]) - f(x)[:, perm]).abs().max()


@dataclass(frozen=True)
class EncodingEntry:
    """One entry ``PE[position, dimension]`` and where it comes from."""

    position: int
    dimension: int
    d_model: int
    value: float
    function: str        # "sin" or "cos"
    pair: int            # i, with dimension = 2i or 2i + 1
    frequency: float     # omega_i, radians per position
    wavelength: float    # 2 * pi / omega_i, positions per full turn


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"{name} is empty: type a whole number")
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {text[:20]!r}") from None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {type(value).__name__}") from None


def encoding_entry(position, dimension, d_model, max_position: int = 10000,
                   base: float = 10000.0) -> EncodingEntry:
    """Validate one (position, dimension, d_model) request and return the entry of the sinusoidal PE.

    Raises ``ValueError`` with a one-line message for anything out of range (what a widget shows).
    """
    d_model = _as_int(d_model, "d_model")
    position = _as_int(position, "position")
    dimension = _as_int(dimension, "dimension")
    if d_model < 2 or d_model % 2 or d_model > 4096:
        raise ValueError(f"d_model must be an even number from 2 to 4096, got {d_model}")
    if not 0 <= position <= max_position:
        raise ValueError(f"position must be between 0 and {max_position}, got {position}")
    if not 0 <= dimension < d_model:
        raise ValueError(f"dimension must be between 0 and {d_model - 1} (d_model={d_model}), got {dimension}")
    pair = dimension // 2
    omega = base ** (-2 * pair / d_model)
    angle = position * omega
    function = "sin" if dimension % 2 == 0 else "cos"
    value = math.sin(angle) if function == "sin" else math.cos(angle)
    return EncodingEntry(position, dimension, d_model, value, function, pair, omega, 2 * math.pi / omega)


def describe_encoding_entry(position, dimension, d_model, max_position: int = 10000,
                            base: float = 10000.0) -> str:
    """One line for a widget: the entry and its formula, or what is wrong with the input."""
    try:
        e = encoding_entry(position, dimension, d_model, max_position, base)
    except ValueError as exc:
        return f"⚠ {exc}"
    return (f"PE[{e.position}, {e.dimension}] = {e.function}({e.position} × {e.frequency:.4g}) = {e.value:+.4f}"
            f"   (pair i={e.pair}, wavelength {e.wavelength:.4g} positions)")
