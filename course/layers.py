"""The transformer block and its parts: norms, feed-forward networks, residual connections.

A block is two sublayers, each wrapped in a residual connection and a norm:

    pre-norm  (norm_first=True):   x = x + attn(norm1(x));   x = x + ffn(norm2(x))
    post-norm (norm_first=False):  x = norm1(x + attn(x));   x = norm2(x + ffn(x))

Post-norm is the original Transformer (2017) and BERT; pre-norm is GPT-2 onwards and nearly every
large model since, because it keeps an unnormalised path from the input to the output.

Every piece here is written from scratch and tested against PyTorch's own module with the same
weights: :class:`LayerNorm` against ``torch.nn.LayerNorm``, :class:`RMSNorm` against
``torch.nn.RMSNorm``, :class:`TransformerBlock` against ``torch.nn.TransformerEncoderLayer``
(:func:`load_from_torch_encoder_layer` copies the weights across).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.attention import MultiHeadAttention, check_torch_mha, torch_mha_plan
from course.weights import MODULE_QUESTION, Step, load_plan

if TYPE_CHECKING:
    from course.efficient import KVCache

__all__ = [
    "layer_norm",
    "rms_norm",
    "feed_forward",
    "swiglu",
    "sublayer_connection",
    "LayerNorm",
    "RMSNorm",
    "FeedForward",
    "make_norm",
    "TransformerBlock",
    "check_torch_encoder_layer",
    "torch_encoder_layer_plan",
    "load_from_torch_encoder_layer",
    "DecoderBlock",
    "check_torch_decoder_layer",
    "torch_decoder_layer_plan",
    "load_from_torch_decoder_layer",
    "count_parameters",
    "block_parameter_breakdown",
    "block_parameter_formula",
    "ACTIVATIONS",
    "NORMS",
]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")
NORMS = ("layer", "rms")


# ---------------------------------------------------------------------------------------------
# Functional pieces: the formulas, written once. The modules below call them.
# ---------------------------------------------------------------------------------------------

def _check_last_dim(x: Tensor, d: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"{what} expects x of shape [..., {d}], got {tuple(x.shape)}")


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each vector along the last axis to mean 0 and variance 1, then scale and shift.

    ``x: [..., d]``, ``weight, bias: [d]`` (or None) -> ``[..., d]``::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    with the *biased* variance (divide by d, not d - 1), as ``torch.nn.LayerNorm`` does.
    """
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != x.shape[-1:]:
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)}, expected ({x.shape[-1]},) "
                             f"for x of shape {tuple(x.shape)}")
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float | None = 1e-6) -> Tensor:
    """Divide each vector by its root mean square along the last axis, then scale (no centring, no shift).

    ``x: [..., d]``, ``weight: [d]`` (or None) -> ``[..., d]``::

        y = x / sqrt(mean(x**2) + eps) * weight

    ``eps=None`` uses the machine epsilon of ``x``'s dtype, as ``torch.nn.RMSNorm`` does.
    """
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},) "
                         f"for x of shape {tuple(x.shape)}")
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y * weight if weight is not None else y


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu  # the exact (erf) GELU, as torch.nn.TransformerEncoderLayer uses
    if name == "gelu_tanh":
        return _gelu_tanh  # GPT-2's tanh approximation of GELU
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                 activation: str = "relu") -> Tensor:
    """The position-wise feed-forward network ``FFN(x) = act(x W1 + b1) W2 + b2``.

    ``x: [..., d_model]``, ``w1: [d_model, d_ff]``, ``b1: [d_ff]``, ``w2: [d_ff, d_model]``,
    ``b2: [d_model]`` -> ``[..., d_model]``. Weights are laid out as in the formula (input
    dimension first); ``nn.Linear`` stores the transpose. ``activation``: "relu" or "gelu".
    """
    if w1.dim() != 2 or w2.dim() != 2 or x.shape[-1] != w1.shape[0] or w1.shape[1] != w2.shape[0]:
        raise ValueError(f"feed_forward: shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)} "
                         f"(expected [d_model, d_ff]), w2 {tuple(w2.shape)} (expected [d_ff, d_model])")
    h = x @ w1
    if b1 is not None:
        h = h + b1
    out = _activation(activation)(h) @ w2
    return out + b2 if b2 is not None else out


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """The SwiGLU feed-forward network (Shazeer 2020; PaLM, Llama): a gated FFN.

    ``SwiGLU(x) = (silu(x W_gate) * (x W_up)) W_down`` with ``silu(z) = z * sigmoid(z)``.
    ``x: [..., d_model]``, ``w_gate, w_up: [d_model, d_ff]``, ``w_down: [d_ff, d_model]`` ->
    ``[..., d_model]``.
    """
    if (w_gate.shape != w_up.shape or w_gate.dim() != 2 or x.shape[-1] != w_gate.shape[0]
            or w_down.dim() != 2 or w_down.shape[0] != w_gate.shape[1]):
        raise ValueError(f"swiglu: shapes do not chain: x {tuple(x.shape)}, w_gate {tuple(w_gate.shape)}, "
                         f"w_up {tuple(w_up.shape)} (both [d_model, d_ff]), w_down {tuple(w_down.shape)} "
                         "(expected [d_ff, d_model])")
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


def sublayer_connection(x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: Callable[[Tensor], Tensor],
                        norm_first: bool) -> Tensor:
    """Wrap ``sublayer`` in a residual connection and a norm. ``x: [..., d]`` -> ``[..., d]``.

    Pre-norm (``norm_first=True``): ``x + sublayer(norm(x))``.
    Post-norm (``norm_first=False``): ``norm(x + sublayer(x))``.
    """
    if norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """Layer normalisation from scratch; same parameters and results as ``torch.nn.LayerNorm(d)``.

    ``forward(x: [..., d]) -> [..., d]``. ``weight`` starts at ones and ``bias`` at zeros.

    ``fused=False`` computes :func:`layer_norm`, the formula written out above, in five tensor operations
    (each a pass over memory, each saved for the backward pass). ``fused=True`` (the default) hands the
    same formula to ``torch.nn.functional.layer_norm``, one kernel forward and one backward: the course's
    models train about 10% faster with it. The two agree to float32 rounding (tested); lesson 06 shows the
    formula and this switch.
    """

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True, fused: bool = True):
        super().__init__()
        self.d, self.eps, self.fused = d, eps, fused
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d, f"LayerNorm({self.d})")
        if self.fused:
            return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps:g}, bias={self.bias is not None}" + ("" if self.fused else ", fused=False")


class RMSNorm(nn.Module):
    """RMS normalisation from scratch; same parameters and results as ``torch.nn.RMSNorm(d, eps)``.

    ``forward(x: [..., d]) -> [..., d]``. Only a scale (``weight``, starting at ones): no bias.
    """

    def __init__(self, d: int, eps: float | None = 1e-6):
        super().__init__()
        self.d, self.eps = d, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d, f"RMSNorm({self.d})")
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


def make_norm(kind: str, d: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``"layer"`` -> :class:`LayerNorm`, ``"rms"`` -> :class:`RMSNorm`."""
    if kind == "layer":
        return LayerNorm(d, eps, bias=bias)
    if kind == "rms":
        return RMSNorm(d, eps)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class FeedForward(nn.Module):
    """Position-wise feed-forward network, applied to every position separately.

    ``activation="relu"``: ``linear2(dropout(relu(linear1(x))))``, the 2017 Transformer;
    ``"gelu"``: the same with GELU (BERT); ``"gelu_tanh"``: GELU's tanh approximation (GPT-2);
    ``"swiglu"``:
    ``linear2(dropout(silu(gate(x)) * linear1(x)))`` (Llama, with ``gate`` = W_gate,
    ``linear1`` = W_up, ``linear2`` = W_down).
    ``forward(x: [..., d_model]) -> [..., d_model]``.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d_model, f"FeedForward(d_model={self.d_model})")
        if self.gate is not None:
            hidden = F.silu(self.gate(x)) * self.linear1(x)
        else:
            hidden = _activation(self.activation)(self.linear1(x))
        return self.linear2(self.dropout(hidden))


class TransformerBlock(nn.Module):
    """One transformer encoder block: self-attention and a feed-forward network, each with a residual.

    ``forward(x: [batch, seq, d_model], mask=None) -> [batch, seq, d_model]``; ``mask`` is boolean,
    True where attention is allowed (e.g. :func:`course.attention.causal_mask`), broadcastable to
    ``[batch, heads, seq, seq]``.

    Sub-modules carry ``torch.nn.TransformerEncoderLayer``'s names (``self_attn``, ``norm1``,
    ``norm2``, ``dropout1``, ``dropout2``) with the feed-forward net in ``ffn``, so that with the same
    weights (:func:`load_from_torch_encoder_layer`) both give the same outputs.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, norm_first: bool = True,
                 activation: str = "relu", dropout: float = 0.0, norm: str = "layer",
                 eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, activation, dropout=dropout, bias=bias)
        self.norm1 = make_norm(norm, d_model, eps, bias)
        self.norm2 = make_norm(norm, d_model, eps, bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _feed_forward(self, h: Tensor) -> Tensor:
        return self.dropout2(self.ffn(h))

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False,
                cache: KVCache | None = None):
        """-> ``[batch, seq, d_model]``; with ``need_weights=True`` also the attention weights
        ``[batch, heads, seq, seq]``, as ``(output, weights)``. ``cache``: the keys and values of
        earlier positions, for self-attention (see :class:`course.attention.MultiHeadAttention`)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"TransformerBlock(d_model={self.d_model}) expects x of shape "
                             f"[batch, seq, {self.d_model}], got {tuple(x.shape)}")
        kept: list[Tensor] = []

        def attend(h: Tensor) -> Tensor:
            if not need_weights:  # the attention's fast path: no weights computed
                return self.dropout1(self.self_attn(h, h, h, mask=mask, cache=cache))
            out, weights = self.self_attn(h, h, h, mask=mask, need_weights=True, cache=cache)
            kept.append(weights)
            return self.dropout1(out)

        x = sublayer_connection(x, attend, self.norm1, self.norm_first)
        x = sublayer_connection(x, self._feed_forward, self.norm2, self.norm_first)
        return (x, kept[0]) if need_weights else x


# ---------------------------------------------------------------------------------------------
# Weights from PyTorch, and parameter counting
# ---------------------------------------------------------------------------------------------

def _torch_activation_name(layer: nn.TransformerEncoderLayer) -> str:
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or isinstance(act, nn.GELU):
        return "gelu"
    return getattr(act, "__name__", type(act).__name__)


def _linear_steps(ours: str, theirs: str) -> list[Step]:
    """``ours.weight <- theirs.weight`` and the biases, if either side has them (a Linear or a norm)."""
    return [Step(f"{ours}.weight", f"{theirs}.weight"), Step(f"{ours}.bias", f"{theirs}.bias", optional=True)]


def check_torch_encoder_layer(ours: TransformerBlock, theirs: nn.TransformerEncoderLayer) -> None:
    """Raise unless our block and torch's layer compute the same function (given the same weights):
    the same norm placement, activation, norm kind and eps, and attention of the same size."""
    if not isinstance(theirs, nn.TransformerEncoderLayer):
        raise TypeError(f"expected torch.nn.TransformerEncoderLayer, got {type(theirs).__name__}")
    if bool(theirs.norm_first) != bool(ours.norm_first):
        raise ValueError(f"norm_first differs: ours {ours.norm_first}, torch's {theirs.norm_first}")
    act = _torch_activation_name(theirs)
    if act != ours.ffn.activation:
        raise ValueError(f"activation differs: ours {ours.ffn.activation!r}, torch's {act!r}")
    if not isinstance(ours.norm1, LayerNorm):
        raise ValueError(f"torch's layer uses LayerNorm; ours uses {type(ours.norm1).__name__}")
    if ours.norm1.eps != theirs.norm1.eps:
        raise ValueError(f"norm eps differs: ours {ours.norm1.eps:g}, torch's {theirs.norm1.eps:g}")
    check_torch_mha(ours.self_attn, theirs.self_attn, where="self_attn: ")


def torch_encoder_layer_plan(ours: str = "", theirs: str = "") -> list[Step]:
    """How a :class:`TransformerBlock`'s parameters come from a ``torch.nn.TransformerEncoderLayer``'s
    (a weight plan, see :mod:`course.weights`); ``ours`` and ``theirs`` prefix the names."""
    plan = torch_mha_plan(f"{ours}self_attn.", f"{theirs}self_attn.")
    for mine, torchs in [("ffn.linear1", "linear1"), ("ffn.linear2", "linear2"), ("norm1", "norm1"), ("norm2", "norm2")]:
        plan += _linear_steps(f"{ours}{mine}", f"{theirs}{torchs}")
    return plan


def load_from_torch_encoder_layer(ours: TransformerBlock, theirs: nn.TransformerEncoderLayer) -> TransformerBlock:
    """Copy the weights of ``torch.nn.TransformerEncoderLayer`` into our block (in place; returns it).

    Torch keeps the query, key and value projections in one ``in_proj_weight: [3*d, d]``; it is
    split into ``q_proj``, ``k_proj``, ``v_proj`` (see :func:`course.attention.torch_mha_plan`).
    A different structure (activation, norm placement, norm kind) raises a ``ValueError`` saying
    so; a parameter that does not fit raises :class:`course.weights.WeightMismatchError` naming it
    and both shapes.
    """
    check_torch_encoder_layer(ours, theirs)
    return load_plan(ours, theirs.state_dict(), torch_encoder_layer_plan(), question=MODULE_QUESTION)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalar parameters in ``module`` (shared tensors counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def block_parameter_breakdown(d_model: int, d_ff: int, *, activation: str = "relu", norm: str = "layer",
                              bias: bool = True) -> dict[str, int]:
    """Parameters of one :class:`TransformerBlock`, part by part, from the formula (no module built).

    - attention: four ``d x d`` projections (Q, K, V, output) ``+ 4d`` biases;
    - feed-forward: ``2 * d * d_ff (+ d_ff + d)`` for ReLU/GELU, ``3 * d * d_ff (+ 2 d_ff + d)``
      for SwiGLU (its extra gate matrix);
    - norms: two of them, ``2d`` each for LayerNorm (scale and shift; ``d`` without bias), ``d`` for RMSNorm.

    The number of heads does not appear: splitting ``d`` into heads does not change the projections.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    d = d_model
    attention = 4 * d * d + (4 * d if bias else 0)
    if activation == "swiglu":
        ffn = 3 * d * d_ff + ((2 * d_ff + d) if bias else 0)
    else:
        ffn = 2 * d * d_ff + ((d_ff + d) if bias else 0)
    per_norm = (2 * d if bias else d) if norm == "layer" else d
    return {"attention": attention, "feed-forward": ffn, "norms": 2 * per_norm}


def block_parameter_formula(d_model: int, d_ff: int, *, activation: str = "relu", norm: str = "layer",
                            bias: bool = True) -> int:
    """Total parameters of one :class:`TransformerBlock` (see :func:`block_parameter_breakdown`).

    With biases, LayerNorm and ReLU: ``4 d^2 + 2 d d_ff + d_ff + 9 d``.
    """
    return sum(block_parameter_breakdown(d_model, d_ff, activation=activation, norm=norm, bias=bias).values())

class DecoderBlock(nn.Module):
    """One transformer decoder block: causal self-attention, cross-attention to the encoder, feed-forward.

    ``forward(x [batch, tgt, d], memory [batch, src, d], self_mask=None, memory_mask=None,
    need_weights=False) -> [batch, tgt, d]`` (or ``(output, cross_weights [batch, heads, tgt, src])``).
    Masks are boolean, True = allowed: ``self_mask`` is usually :func:`course.attention.causal_mask`,
    ``memory_mask`` usually the source padding mask ``[batch, 1, 1, src]``.

    Sub-modules carry ``torch.nn.TransformerDecoderLayer``'s names (``self_attn``,
    ``multihead_attn``, ``norm1..3``) so :func:`load_from_torch_decoder_layer` can copy its weights.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, norm_first: bool = True,
                 activation: str = "relu", dropout: float = 0.0, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, bias=bias)
        self.multihead_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, activation, dropout=dropout, bias=bias)
        self.norm1 = LayerNorm(d_model, eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps, bias=bias)
        self.norm3 = LayerNorm(d_model, eps, bias=bias)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, need_weights: bool = False):
        if x.dim() != 3 or memory.dim() != 3 or x.shape[-1] != self.d_model or memory.shape[-1] != self.d_model:
            raise ValueError(f"DecoderBlock(d_model={self.d_model}) expects x [batch, tgt, {self.d_model}] and "
                             f"memory [batch, src, {self.d_model}], got {tuple(x.shape)} and {tuple(memory.shape)}")
        cross: list[Tensor] = []

        def attend_self(h: Tensor) -> Tensor:
            return self.dropout1(self.self_attn(h, h, h, mask=self_mask))

        def attend_memory(h: Tensor) -> Tensor:
            out, weights = self.multihead_attn(h, memory, memory, mask=memory_mask, need_weights=True)
            cross.append(weights)
            return self.dropout2(out)

        x = sublayer_connection(x, attend_self, self.norm1, self.norm_first)
        x = sublayer_connection(x, attend_memory, self.norm2, self.norm_first)
        x = sublayer_connection(x, lambda h: self.dropout3(self.ffn(h)), self.norm3, self.norm_first)
        return (x, cross[0]) if need_weights else x


def check_torch_decoder_layer(ours: DecoderBlock, theirs: nn.TransformerDecoderLayer) -> None:
    """Raise unless our decoder block and torch's layer have the same norm placement and attention sizes."""
    if not isinstance(theirs, nn.TransformerDecoderLayer):
        raise TypeError(f"expected torch.nn.TransformerDecoderLayer, got {type(theirs).__name__}")
    if bool(theirs.norm_first) != bool(ours.norm_first):
        raise ValueError(f"norm_first differs: ours {ours.norm_first}, torch's {theirs.norm_first}")
    for name in ("self_attn", "multihead_attn"):
        check_torch_mha(getattr(ours, name), getattr(theirs, name), where=f"{name}: ")


def torch_decoder_layer_plan(ours: str = "", theirs: str = "") -> list[Step]:
    """How a :class:`DecoderBlock`'s parameters come from a ``torch.nn.TransformerDecoderLayer``'s."""
    plan = torch_mha_plan(f"{ours}self_attn.", f"{theirs}self_attn.")
    plan += torch_mha_plan(f"{ours}multihead_attn.", f"{theirs}multihead_attn.")
    for mine, torchs in [("ffn.linear1", "linear1"), ("ffn.linear2", "linear2"),
                         ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")]:
        plan += _linear_steps(f"{ours}{mine}", f"{theirs}{torchs}")
    return plan


def load_from_torch_decoder_layer(ours: DecoderBlock, theirs: nn.TransformerDecoderLayer) -> DecoderBlock:
    """Copy ``torch.nn.TransformerDecoderLayer``'s weights into our block (in place; returns it).

    A parameter that does not fit raises :class:`course.weights.WeightMismatchError` naming it and both shapes.
    """
    check_torch_decoder_layer(ours, theirs)
    return load_plan(ours, theirs.state_dict(), torch_decoder_layer_plan(), question=MODULE_QUESTION)
