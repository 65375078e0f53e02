"""Recurrent networks written as the loop they are, and lesson 01's measurements against attention.

An RNN reads a sequence one step at a time: step ``t`` needs the hidden state of step ``t - 1``,
so ``n`` tokens cost ``n`` steps one after another, and what token 1 said reaches token ``n`` only
through ``n - 1`` multiplications by the same matrix. Attention compares every position with every
other in one matrix product: no step waits for another, and every token is one hop from every
other. This module writes both, checks the RNN against ``torch.nn.RNN`` and ``torch.nn.LSTM``, and
measures the two claims: speed as the sequence grows, and how far back a gradient reaches.

Conventions: batch first, row vectors. ``x: [batch, seq, d_in]`` (or ``[seq, d_in]``), weights
multiply from the right (``x @ W``), so ``W_xh: [d_in, d_h]``. PyTorch stores the transposes
(``weight_ih_l0: [d_h, d_in]``); :func:`rnn_weights_from_torch` converts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .bench import benchmark
from .utils import describe_exception, format_table, shape_of

__all__ = [
    "rnn_step",
    "rnn_forward",
    "lstm_step",
    "lstm_forward",
    "rnn_weights_from_torch",
    "lstm_weights_from_torch",
    "attention_forward",
    "sequential_steps",
    "layer_multiply_adds",
    "expected_gpu_attention",
    "gradient_reach",
    "reach_curves",
    "time_sequence_models",
    "time_training_step",
    "format_table",
]


def _batched(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, bool]:
    """Return ``x`` as ``[batch, seq, d]`` and whether a batch dimension was added."""
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() == 3:
        return x, False
    raise ValueError(f"{name} must be [batch, seq, d] or [seq, d], got shape {shape_of(x)}")


# ----------------------------------------------------------------------------------------------
# The Elman RNN
# ----------------------------------------------------------------------------------------------
def rnn_step(x_t: torch.Tensor, h_prev: torch.Tensor, W_xh: torch.Tensor, W_hh: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
    """One step of an Elman RNN: ``h_t = tanh(x_t @ W_xh + h_prev @ W_hh + b)``.

    ``x_t: [batch, d_in]``, ``h_prev: [batch, d_h]``, ``W_xh: [d_in, d_h]``, ``W_hh: [d_h, d_h]``,
    ``b: [d_h]`` -> ``h_t: [batch, d_h]``.
    """
    if W_xh.dim() != 2 or W_hh.dim() != 2 or W_hh.shape[0] != W_hh.shape[1] or W_xh.shape[1] != W_hh.shape[0]:
        raise ValueError(f"need W_xh [d_in, d_h] and W_hh [d_h, d_h]; got W_xh {shape_of(W_xh)}, W_hh {shape_of(W_hh)}")
    if x_t.shape[-1] != W_xh.shape[0] or h_prev.shape[-1] != W_hh.shape[0] or b.shape != (W_hh.shape[0],):
        raise ValueError(f"shapes do not fit: x_t {shape_of(x_t)}, h_prev {shape_of(h_prev)}, "
                         f"W_xh {shape_of(W_xh)}, W_hh {shape_of(W_hh)}, b {shape_of(b)}")
    return torch.tanh(x_t @ W_xh + h_prev @ W_hh + b)


def rnn_forward(x: torch.Tensor, W_xh: torch.Tensor, W_hh: torch.Tensor, b: torch.Tensor,
                h0: torch.Tensor | None = None) -> torch.Tensor:
    """Run :func:`rnn_step` over time, in an explicit Python loop, and stack the hidden states.

    ``x: [batch, seq, d_in]`` (or ``[seq, d_in]``), ``h0: [batch, d_h]`` (zeros if None)
    -> ``[batch, seq, d_h]`` (or ``[seq, d_h]``): the hidden state after each step. Equal to
    ``torch.nn.RNN(nonlinearity="tanh", batch_first=True)`` with the same weights.
    """
    xb, unbatched = _batched(x)
    batch, seq, _ = xb.shape
    h = xb.new_zeros(batch, W_hh.shape[0]) if h0 is None else h0
    states = []
    for t in range(seq):  # the sequential part: step t must wait for step t - 1
        h = rnn_step(xb[:, t], h, W_xh, W_hh, b)
        states.append(h)
    out = torch.stack(states, dim=1)
    return out[0] if unbatched else out


def rnn_weights_from_torch(rnn: nn.RNN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W_xh [d_in, d_h], W_hh [d_h, d_h], b [d_h])`` of a one-layer ``nn.RNN`` in this module's layout.

    PyTorch has two biases (``bias_ih`` and ``bias_hh``); they are only ever added, so ``b`` is their sum.
    """
    if rnn.num_layers != 1 or rnn.bidirectional or rnn.nonlinearity != "tanh":
        raise ValueError("only a one-layer, one-directional tanh nn.RNN maps onto rnn_forward")
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0 if rnn.bias else torch.zeros(rnn.hidden_size)
    return rnn.weight_ih_l0.detach().T, rnn.weight_hh_l0.detach().T, b.detach()


# ----------------------------------------------------------------------------------------------
# The LSTM (for comparison: gates let the gradient travel further, but the loop stays)
# ----------------------------------------------------------------------------------------------
def lstm_step(x_t: torch.Tensor, h_prev: torch.Tensor, c_prev: torch.Tensor, W_x: torch.Tensor,
              W_h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. ``x_t: [batch, d_in]``, ``h_prev, c_prev: [batch, d_h]``,
    ``W_x: [d_in, 4 d_h]``, ``W_h: [d_h, 4 d_h]``, ``b: [4 d_h]`` -> ``(h_t, c_t)``, each ``[batch, d_h]``.

    The four blocks of ``4 d_h`` are the input, forget, cell and output gates, in PyTorch's order.
    """
    d_h = h_prev.shape[-1]
    if W_x.shape[-1] != 4 * d_h or W_h.shape != (d_h, 4 * d_h) or b.shape != (4 * d_h,):
        raise ValueError(f"need W_x [d_in, {4 * d_h}], W_h [{d_h}, {4 * d_h}], b [{4 * d_h}]; "
                         f"got W_x {shape_of(W_x)}, W_h {shape_of(W_h)}, b {shape_of(b)}")
    gates = x_t @ W_x + h_prev @ W_h + b  # [batch, 4 d_h]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def lstm_forward(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Run :func:`lstm_step` over time from zero states. ``x: [batch, seq, d_in]`` (or ``[seq, d_in]``)
    -> hidden states ``[batch, seq, d_h]`` (or ``[seq, d_h]``); equal to ``nn.LSTM(batch_first=True)``."""
    xb, unbatched = _batched(x)
    batch, seq, _ = xb.shape
    h = xb.new_zeros(batch, W_h.shape[0])
    c = xb.new_zeros(batch, W_h.shape[0])
    states = []
    for t in range(seq):
        h, c = lstm_step(xb[:, t], h, c, W_x, W_h, b)
        states.append(h)
    out = torch.stack(states, dim=1)
    return out[0] if unbatched else out


def lstm_weights_from_torch(lstm: nn.LSTM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W_x [d_in, 4 d_h], W_h [d_h, 4 d_h], b [4 d_h])`` of a one-layer ``nn.LSTM``."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ValueError("only a one-layer, one-directional nn.LSTM without projection maps onto lstm_forward")
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0 if lstm.bias else torch.zeros(4 * lstm.hidden_size)
    return lstm.weight_ih_l0.detach().T, lstm.weight_hh_l0.detach().T, b.detach()


# ----------------------------------------------------------------------------------------------
# Attention in the open (lesson 03 builds it properly in course.attention)
# ----------------------------------------------------------------------------------------------
def attention_forward(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor) -> torch.Tensor:
    """Self-attention of every position to every position, with no loop over time.

    ``x: [batch, seq, d]`` (or ``[seq, d]``), ``W_q, W_k: [d, d_k]``, ``W_v: [d, d_v]``
    -> ``[batch, seq, d_v]`` (or ``[seq, d_v]``):
    ``softmax(Q K^T / sqrt(d_k)) V`` with ``Q = x W_q``, ``K = x W_k``, ``V = x W_v``.
    """
    if x.shape[-1] != W_q.shape[0] or W_q.shape != W_k.shape or W_v.shape[0] != x.shape[-1]:
        raise ValueError(f"shapes do not fit: x {shape_of(x)}, W_q {shape_of(W_q)}, W_k {shape_of(W_k)}, W_v {shape_of(W_v)}")
    q, k, v = x @ W_q, x @ W_k, x @ W_v
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [batch, seq, seq]: all pairs at once
    weights = torch.softmax(scores, dim=-1)
    return weights @ v  # each output: a weighted average of all the values


# ----------------------------------------------------------------------------------------------
# Counting and measuring
# ----------------------------------------------------------------------------------------------
def sequential_steps(kind: str, seq_len: int, n_layers: int = 1) -> int:
    """How many steps must run one after another (the critical path), with unlimited parallel hardware.

    - ``"rnn"``: step ``t`` of layer ``l`` needs step ``t - 1`` of layer ``l`` and step ``t`` of
      layer ``l - 1``. The layers can overlap like a staircase (layer 2 starts on token 1 while
      layer 1 reads token 2), so the longest chain is ``seq_len + n_layers - 1``, not their product.
    - ``"attention"``: a layer handles all positions at once, so only the layers wait on each
      other: ``n_layers``, whatever the length.
    """
    if seq_len < 1 or n_layers < 1:
        raise ValueError(f"seq_len and n_layers must be at least 1, got {seq_len} and {n_layers}")
    if kind == "rnn":
        return seq_len + n_layers - 1
    if kind == "attention":
        return n_layers
    raise ValueError(f"kind must be 'rnn' or 'attention', got {kind!r}")


def layer_multiply_adds(kind: str, n: int, d: int) -> int:
    """Multiply-adds of one layer's forward pass over ``n`` tokens of width ``d`` (batch 1, biases not counted).

    - ``"rnn"``: ``2 n d^2``: ``x_t W_xh`` and ``h_{t-1} W_hh`` for every token;
    - ``"lstm"``: ``8 n d^2``: the same two products for each of the four gates;
    - ``"attention"``: ``3 n d^2 + 2 n^2 d``: the projections Q, K, V (``n d^2`` each), then ``Q K^T`` and
      ``weights @ V``, ``n^2 d`` multiply-adds each.

    A multiply-add is two floating-point operations, so attention's two products are ``4 n^2 d`` FLOPs,
    the count of :func:`course.efficient.attention_flops` (lesson 11).
    """
    for name, value in (("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    counts = {"rnn": 2 * n * d * d, "lstm": 8 * n * d * d, "attention": 3 * n * d * d + 2 * n * n * d}
    if kind not in counts:
        raise ValueError(f"kind must be one of {sorted(counts)}, got {kind!r}")
    return counts[kind]


def expected_gpu_attention() -> dict:
    """The GPU figure lesson 01 prints beside the learner's own: naive attention, forward, on a real GPU.

    From the course's kept reference table (``course/data/reference/sdpa_h100.json``, recorded by
    ``utils/gpu_reference.py``: the naive row at bf16, head size 128, 4096 tokens, non-causal) when it
    exists; otherwise from :data:`course.sdpa_bench.QUOTED_H100`, whose label says the figures were quoted,
    not measured by this course. Returns ``{"source", "config", "ms", "tflops", "flops"}``; ``source`` names
    where the numbers come from and must be printed with them; ``flops`` is the problem's size in FLOPs,
    counted by :func:`course.efficient.attention_flops` (``None`` if the quoted configuration cannot be read).
    """
    import re

    from . import sdpa_bench
    from .efficient import attention_flops

    reference = sdpa_bench.load_reference()
    if reference is not None:
        meta, results = reference
        for r in results:
            e = r.entry
            if (e.backend, e.dtype, e.head_dim, e.seq, e.causal, e.mode) == ("naive", "bfloat16", 128, 4096, False, "fwd") \
                    and r.status == sdpa_bench.OK:
                return {"source": f"measured by this course on {meta['device']} ({meta['date']})",
                        "config": f"bf16, batch {e.batch}, {e.heads} heads, head size 128, 4096 tokens, non-causal, forward",
                        "ms": r.ms, "tflops": r.tflops, "flops": e.flops}
    quoted = sdpa_bench.QUOTED_H100
    naive = next(row for row in quoted["rows"] if row["backend"] == "naive")
    sizes = re.search(r"batch (\d+), (\d+) heads, head size (\d+), (\d+) tokens", quoted["config"])
    flops = None
    if sizes:
        batch, heads, head_dim, seq = (int(v) for v in sizes.groups())
        flops = attention_flops(batch, heads, seq, head_dim, causal="non-causal" not in quoted["config"])
    return {"source": quoted["label"], "config": quoted["config"], "ms": naive["ms"], "tflops": naive["tflops"],
            "flops": flops}


def gradient_reach(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """How strongly the last output depends on each input position.

    ``fn`` maps ``x: [seq, d_in]`` to outputs ``[seq, d_out]``. Returns ``[seq]``: entry ``t`` is
    ``|| d (sum of the last output vector) / d x[t] ||``, the gradient the last position sends back
    to position ``t``. For an RNN it shrinks with the distance ``seq - 1 - t``; for attention it does not.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [seq, d_in], got shape {shape_of(x)}")
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"fn must map x {shape_of(x)} to [seq, d_out], got {shape_of(out)}")
    (grad,) = torch.autograd.grad(out[-1].sum(), x)
    return grad.norm(dim=-1)  # [seq]


def _models(d_model: int, seed: int = 0, dtype: torch.dtype = torch.float64
            ) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]]:
    """The three layers lesson 01 compares, with PyTorch's default initialisation, seeded."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rnn = nn.RNN(d_model, d_model, batch_first=True)
    lstm = nn.LSTM(d_model, d_model, batch_first=True)
    W_xh, W_hh, b = (w.to(dtype) for w in rnn_weights_from_torch(rnn))
    W_x, W_h, b4 = (w.to(dtype) for w in lstm_weights_from_torch(lstm))
    W_q, W_k, W_v = (torch.randn(d_model, d_model, generator=g).div(math.sqrt(d_model)).to(dtype) for _ in range(3))
    return {
        "RNN": (lambda x: rnn_forward(x, W_xh, W_hh, b), [W_xh, W_hh, b]),
        "LSTM": (lambda x: lstm_forward(x, W_x, W_h, b4), [W_x, W_h, b4]),
        "attention": (lambda x: attention_forward(x, W_q, W_k, W_v), [W_q, W_k, W_v]),
    }


def reach_curves(seq_len: int = 200, d_model: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`gradient_reach` of an RNN, an LSTM and one attention layer on the same random input.

    Returns ``{name: [seq_len]}`` indexed by *distance* from the last position (entry 0 is the
    last token itself, entry ``k`` the token ``k`` steps back). Weights: PyTorch's default
    initialisation for the RNN and LSTM, ``randn / sqrt(d)`` for attention, all seeded. Computed in
    float64, so gradients down to about 1e-300 are resolved instead of rounding to zero.
    """
    x = torch.randn(seq_len, d_model, generator=torch.Generator().manual_seed(seed + 1)).double()
    return {name: gradient_reach(fn, x).flip(0) for name, (fn, _) in _models(d_model, seed).items()}


def _timed_models(d_model: int, device: torch.device | str,
                  seed: int = 0) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Forward functions to time: our Python loop, PyTorch's RNN and LSTM (C++ / cuDNN loops), attention."""
    torch.manual_seed(seed)
    rnn = nn.RNN(d_model, d_model, batch_first=True).to(device)
    lstm = nn.LSTM(d_model, d_model, batch_first=True).to(device)
    W_xh, W_hh, b = (w.to(device) for w in rnn_weights_from_torch(rnn))
    g = torch.Generator().manual_seed(seed)
    W_q, W_k, W_v = (torch.randn(d_model, d_model, generator=g).div(math.sqrt(d_model)).to(device) for _ in range(3))
    return {
        "RNN, our Python loop": lambda x: rnn_forward(x, W_xh, W_hh, b),
        "nn.RNN (PyTorch's loop)": lambda x: rnn(x)[0],
        "nn.LSTM (PyTorch's loop)": lambda x: lstm(x)[0],
        "attention (one product)": lambda x: attention_forward(x, W_q, W_k, W_v),
    }


def time_sequence_models(lengths: Sequence[int], d_model: int = 64, batch: int = 1,
                         device: torch.device | str = "cpu", min_run_time: float = 0.1,
                         show_progress: bool = False) -> list[dict]:
    """Time one forward pass of each model in :func:`_timed_models` at each sequence length.

    Returns rows ``{"length", "model", "ms"}`` (median milliseconds from :func:`course.bench.benchmark`).
    Inputs are ``[batch, length, d_model]`` on ``device``; gradients are off. A model the device
    cannot run (an operation missing on Apple's MPS, say) gets ``ms = nan`` and an ``"error"`` entry
    instead of stopping the lesson.
    """
    device = torch.device(device)
    models = _timed_models(d_model, device)
    rows = []
    pairs = [(n, name) for n in lengths for name in models]
    if show_progress:
        from .progress import progress
        pairs = progress(pairs, desc="timing")
    g = torch.Generator().manual_seed(1)
    inputs = {n: torch.randn(batch, n, d_model, generator=g).to(device) for n in lengths}
    with torch.no_grad():
        for n, name in pairs:
            fn, x = models[name], inputs[n]
            try:
                t = benchmark(lambda: fn(x), f"{name} n={n}", device=device, warmup=1, min_run_time=min_run_time)
            except (RuntimeError, NotImplementedError) as exc:
                rows.append({"length": n, "model": name, "ms": math.nan, "error": describe_exception(exc, limit=120)})
                continue
            rows.append({"length": n, "model": name, "ms": t.median_ms})
    return rows


def time_training_step(length: int, d_model: int = 64, batch: int = 1, device: torch.device | str = "cpu",
                       min_run_time: float = 0.2) -> dict[str, float]:
    """Milliseconds for one forward **and backward** pass (what training repeats), per model.

    The RNN and LSTM are PyTorch's own (their fastest form here); attention is
    :func:`attention_forward` with trainable ``W_q, W_k, W_v``. Returns ``{model: ms}``, ``nan`` for
    a model the device cannot run.
    """
    device = torch.device(device)
    torch.manual_seed(0)
    rnn = nn.RNN(d_model, d_model, batch_first=True).to(device)
    lstm = nn.LSTM(d_model, d_model, batch_first=True).to(device)
    W = [torch.nn.Parameter(torch.randn(d_model, d_model, device=device) / math.sqrt(d_model)) for _ in range(3)]
    x = torch.randn(batch, length, d_model, device=device)
    steps = {
        "nn.RNN (PyTorch's loop)": lambda: rnn(x)[0].sum().backward(),
        "nn.LSTM (PyTorch's loop)": lambda: lstm(x)[0].sum().backward(),
        "attention (one product)": lambda: attention_forward(x, *W).sum().backward(),
    }
    times = {}
    for name, step in steps.items():
        try:
            times[name] = benchmark(step, name, device=device, warmup=1, min_run_time=min_run_time).median_ms
        except (RuntimeError, NotImplementedError):  # an operation this device lacks: report nan
            times[name] = math.nan
    return times

