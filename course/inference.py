"""Lesson 17: making a trained transformer cheaper to run, five ways, each measured.

- **Batching** (:func:`pad_prompts`, :func:`batched_generate`, :func:`generation_throughput`): greedy
  generation with a KV cache for many prompts at once. Prompts of different lengths are padded on the
  LEFT, so every prompt's last token sits in the last column where generation continues; an attention
  mask hides the padding and each row's positions start at 0 at its first real token, so a prompt's answer
  in a batch equals its answer alone (tested token for token).
- **Int8 quantization** (:func:`absmax_quantize`, :func:`zeropoint_quantize`, :func:`dequantize`,
  :class:`Int8Linear`, :func:`quantize_linears`, :func:`llm_int8_matmul`): symmetric (absmax) and
  asymmetric (zero-point) int8, per tensor or per channel; a weight-only int8 linear layer swapped into a
  model; sizes in memory and on disk; the outlier features that make per-tensor scales fail and the
  mixed-precision decomposition of LLM.int8() (Dettmers et al., 2022) that handles them.
- **Distillation** (:func:`distillation_loss`): the student matches the teacher's softened distribution
  (temperature ``T``, scaled by ``T**2``) as well as the hard labels (Hinton et al., 2015).
- **Mixture of experts** (:func:`top_k_routing`, :func:`load_balancing_loss`, :class:`MoEFeedForward`,
  :func:`moe_gpt`): a router picks ``k`` of ``n`` feed-forward experts per token; the Switch Transformer's
  auxiliary loss (Fedus et al., 2021) keeps the experts evenly used.
- **Speculative decoding** (:func:`speculative_generate`, :func:`acceptance_count`,
  :func:`residual_distribution`): a small draft model proposes ``k`` tokens, the target checks them in
  one forward pass (Leviathan et al., 2023; Chen et al., 2023); greedy, its output is the target's own.

Bad input gets one line: a tensor with NaN or inf (or all zeros) to quantize, prompts of different lengths
without a mask, a draft model with another vocabulary, a router ``k`` larger than the number of experts.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.attention import causal_mask
from course.bench import benchmark
from course.efficient import KVCache
from course.layers import FeedForward, count_parameters as parameter_count  # the lesson's name for it
from course.models.gpt import GPT
from course.serving import left_pad
from course.utils import eval_mode

__all__ = [
    # batching
    "pad_prompts", "gpt_forward_padded", "batched_generate", "ThroughputRow", "generation_throughput",
    # quantization
    "check_quantizable", "absmax_quantize", "zeropoint_quantize", "dequantize", "quantization_error",
    "Int8Linear", "quantize_linears", "int8_kernel_available", "tensor_bytes", "saved_bytes",
    "llm_int8_matmul", "int8_matmul",
    # quality, training, the real model
    "perplexity", "next_token_accuracy", "parameter_count", "train_lm", "load_smollm2_hf", "smollm2_perplexity",
    # distillation
    "distillation_loss",
    # mixture of experts
    "top_k_routing", "load_balancing_loss", "MoEFeedForward", "moe_gpt", "moe_aux_loss", "expert_usage",
    # speculative decoding
    "acceptance_count", "residual_distribution", "speculative_generate", "SpeculativeResult",
    # claims
    "verdict",
]


# =============================================================================================
# 1. Batching
# =============================================================================================

def pad_prompts(rows: Sequence[Sequence[int]], pad_id: int = 0, side: str = "left") -> tuple[Tensor, Tensor]:
    """Token lists of different lengths -> ``(ids [batch, longest], attention_mask [batch, longest])``.

    ``side="left"`` (what a decoder needs: every prompt ends in the last column, where the next token is
    predicted) is :func:`course.serving.left_pad`; ``side="right"`` pads after the prompt (fine for an encoder
    or for training, wrong for generation: a short prompt's last column is then padding). The mask is 1 at
    real tokens, 0 at padding.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rows = [list(r) for r in rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("pad_prompts needs at least one prompt, each of at least one token")
    if side == "left":
        return left_pad(rows, pad_id)
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def gpt_forward_padded(model: GPT, ids: Tensor, attention_mask: Tensor, caches: Sequence[KVCache] | None = None
                       ) -> Tensor:
    """A course :class:`GPT` over a padded batch: ``ids [batch, s]`` and ``attention_mask [batch, past + s]``
    (1 at real tokens, for the cached positions and the new ones) -> logits ``[batch, s, vocab]``.

    Two things differ from ``model(ids)``: each row's positions count its real tokens only (a prompt padded
    by 3 on the left starts at position 0, not 3), and no query attends to a padded key. A padded query
    still attends to itself, so its row of attention is never empty (its output is never read).
    """
    past = 0 if caches is None else len(caches[0])
    if attention_mask.shape != (ids.shape[0], past + ids.shape[1]):
        raise ValueError(f"attention_mask must be [batch, past + seq] = [{ids.shape[0]}, {past + ids.shape[1]}], "
                         f"got {tuple(attention_mask.shape)}")
    model.check_input(ids, past)
    keep = attention_mask.bool()                                               # [batch, past + s]
    positions = (keep.long().cumsum(dim=-1) - 1).clamp(min=0)[:, past:]        # [batch, s]
    x = model.token_embedding(ids) + model.position_embedding.embedding(positions)
    causal = causal_mask(past + ids.shape[1], device=ids.device)[past:]         # [s, past + s]
    own = torch.zeros_like(causal)
    own[:, past:] = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
    mask = (causal & keep[:, None, :]) | own                                   # [batch, s, past + s]
    for i, block in enumerate(model.blocks):
        x = block(x, mask=mask, cache=None if caches is None else caches[i])
    return model.lm_head(model.final_norm(x))


def _prompt_batch(prompts: Tensor | Sequence[Sequence[int]], attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Prompts as ``ids [batch, s]`` and a mask, refusing ragged prompts without a mask (one line)."""
    if not isinstance(prompts, Tensor):
        rows = [list(r) for r in prompts]
        lengths = sorted({len(r) for r in rows})
        if attention_mask is None and len(lengths) > 1:
            raise ValueError(f"the prompts have different lengths ({', '.join(map(str, lengths))} tokens) and no "
                             "attention mask: pad them on the left with pad_prompts(...) and pass its mask")
        prompts = torch.tensor(rows, dtype=torch.long)
    if prompts.dim() != 2:
        raise ValueError(f"prompts must be token ids [batch, seq], got shape {tuple(prompts.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(prompts)
    if attention_mask.shape != prompts.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the prompts' shape {tuple(prompts.shape)}")
    if not bool(attention_mask[:, -1].bool().all()):
        raise ValueError("a prompt ends in padding (attention_mask is 0 in the last column): a decoder continues "
                         "from the last column, so pad on the LEFT")
    return prompts, attention_mask.long()


@torch.no_grad()
def batched_generate(model: GPT, prompts: Tensor | Sequence[Sequence[int]], max_new_tokens: int,
                     attention_mask: Tensor | None = None) -> Tensor:
    """Greedy generation for a batch, with a KV cache: ``prompts [batch, s]`` (left-padded, with its
    ``attention_mask``) -> the new tokens only, ``[batch, max_new_tokens]``.

    One forward pass reads every prompt (the prefill); then one pass per new token reads one token per row
    against the cached keys and values. Prompts of different lengths given as lists without a mask are
    refused in one line; a mask whose last column holds padding (right padding) too.
    """
    ids, mask = _prompt_batch(prompts, attention_mask)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if ids.shape[1] + max_new_tokens > model.context_length:
        raise ValueError(f"{ids.shape[1]} prompt + {max_new_tokens} new tokens exceed the context length "
                         f"{model.context_length}")
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    caches = [KVCache(model.context_length) for _ in model.blocks]
    out = []
    with eval_mode(model):
        logits = gpt_forward_padded(model, ids, mask, caches)                 # the prefill
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)                   # [batch, 1]
            out.append(nxt)
            if step + 1 < max_new_tokens:
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                logits = gpt_forward_padded(model, nxt, mask, caches)
    return torch.cat(out, dim=1)


@dataclass
class ThroughputRow:
    """One batch size of :func:`generation_throughput`: the whole batch's time is every request's latency."""

    batch: int
    seconds: float          # one call: prefill + all new tokens, for the whole batch
    new_tokens: int         # per request

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.seconds

    @property
    def latency_ms_per_token(self) -> float:
        return 1000 * self.seconds / self.new_tokens


def generation_throughput(model: GPT, prompt_ids: Tensor, batch_sizes: Sequence[int], new_tokens: int,
                          min_run_time: float = 0.2) -> list[ThroughputRow]:
    """Time :func:`batched_generate` at each batch size (``prompt_ids [n, s]``: the first ``b`` rows form the
    batch of size ``b``; median of ``course.bench.benchmark``'s runs)."""
    if max(batch_sizes) > prompt_ids.shape[0]:
        raise ValueError(f"the largest batch ({max(batch_sizes)}) needs that many prompts, got {prompt_ids.shape[0]}")
    rows = []
    for b in batch_sizes:
        batch = prompt_ids[:b]
        timing = benchmark(lambda: batched_generate(model, batch, new_tokens), warmup=1, min_run_time=min_run_time)
        rows.append(ThroughputRow(b, timing.median_ms / 1000, new_tokens))
    return rows


# =============================================================================================
# 2. Int8 quantization
# =============================================================================================

def check_quantizable(x: Tensor) -> None:
    """Raise ``ValueError`` (one line) unless ``x`` is a floating tensor of finite values, not all zero."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"quantization needs a floating-point tensor, got {got}")
    if x.numel() == 0:
        raise ValueError("quantization got an empty tensor")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"the tensor holds {bad} NaN or inf value(s): its range is not finite, so no int8 scale "
                         "fits it; find where they came from (a diverged run, a division by zero) before quantizing")
    if not bool(x.any()):
        raise ValueError("the tensor is all zeros: its absmax is 0, so the scale would be 0 and x / scale undefined; "
                         "nothing needs quantizing (store it as zeros)")


def _reduce_dims(x: Tensor, dim: int | None) -> tuple[int, ...]:
    """The dimensions a scale is taken over: all (per tensor) or all but ``dim`` (one scale per slice of ``dim``)."""
    if dim is None:
        return tuple(range(x.dim()))
    dim = dim % x.dim()
    return tuple(d for d in range(x.dim()) if d != dim)


def absmax_quantize(x: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8: ``x -> (q int8 [like x], scale)`` with ``scale = max|x| / 127`` and
    ``q = round(x / scale)`` in ``[-127, 127]``; ``dequantize(q, scale) ~ x``.

    ``dim=None``: one scale for the whole tensor (``scale`` is 0-d). ``dim=d``: one scale per index of
    dimension ``d`` (per channel; for a linear weight ``[out, in]``, ``dim=0`` gives each output row its own),
    ``scale`` keeps ``x``'s dimensions with size 1 elsewhere, so it broadcasts. A slice that is all zeros
    gets scale 1 (its codes are 0, exact). Rounding is half to even, as ``torch.round``.
    """
    check_quantizable(x)
    dims = _reduce_dims(x, dim)
    absmax = x.detach().abs().amax(dim=dims, keepdim=dim is not None)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).float()
    q = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def zeropoint_quantize(x: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int8: ``x -> (q int8, scale, zero_point)``: the range ``[min, max]`` (widened to hold 0)
    is spread over all 256 codes, ``scale = (max - min) / 255``, ``zero_point = round(-128 - min / scale)``
    (an int8 code; 0.0 maps to it exactly), ``q = clamp(round(x / scale) + zero_point, -128, 127)``.

    Uses the one code absmax leaves unused and, for a lopsided range (all positive, after a ReLU), twice as
    many levels as absmax would. ``dim`` as in :func:`absmax_quantize`.
    """
    check_quantizable(x)
    dims = _reduce_dims(x, dim)
    keep = dim is not None
    lo = x.detach().amin(dim=dims, keepdim=keep).float().clamp(max=0)
    hi = x.detach().amax(dim=dims, keepdim=keep).float().clamp(min=0)
    span = hi - lo
    scale = torch.where(span > 0, span / 255, torch.ones_like(span))
    zero_point = torch.round(-128 - lo / scale).clamp(-128, 127)
    q = (torch.round(x.float() / scale) + zero_point).clamp(-128, 127).to(torch.int8)
    return q, scale, zero_point.to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """int8 codes back to float32: ``(q - zero_point) * scale`` (``zero_point`` None: symmetric, 0)."""
    q = q.float()
    if zero_point is not None:
        q = q - zero_point.float()
    return q * scale


def quantization_error(x: Tensor, scheme: str = "absmax", dim: int | None = None) -> float:
    """Mean absolute error of ``x`` quantized and dequantized with ``scheme`` ("absmax" or "zeropoint")."""
    if scheme == "absmax":
        back = dequantize(*absmax_quantize(x, dim))
    elif scheme == "zeropoint":
        back = dequantize(*zeropoint_quantize(x, dim))
    else:
        raise ValueError(f"scheme must be 'absmax' or 'zeropoint', got {scheme!r}")
    return float((back - x.float()).abs().mean())


def int8_kernel_available() -> bool:
    """Whether this PyTorch has ``torch._weight_int8pack_mm``, its CPU kernel for int8 weights x float inputs."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        torch._weight_int8pack_mm(torch.ones(1, 8), torch.ones(8, 8, dtype=torch.int8), torch.ones(8))
    except Exception:  # noqa: BLE001 - a build without the kernel
        return False
    return True


class Int8Linear(nn.Module):
    """A weight-only int8 linear layer: ``forward(x [..., in]) -> [..., out]``.

    Holds ``weight_int8 [out, in]`` (int8, one absmax scale per output row: per channel), ``scale [out]``
    (float32) and the bias in float32. The inputs stay float32: ``y = x @ (weight_int8 * scale).T + bias``.
    ``kernel="dequantize"`` computes exactly that, rebuilding the float weight at every call (from scratch,
    slower than float32: it does the float product *and* the conversion); ``kernel="int8"`` hands the int8
    weight to PyTorch's ``torch._weight_int8pack_mm``, which reads int8 from memory and scales each output
    (the same numbers up to float rounding), where this PyTorch has it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel: str = "dequantize"):
        super().__init__()
        if kernel not in ("dequantize", "int8"):
            raise ValueError(f"kernel must be 'dequantize' or 'int8', got {kernel!r}")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "dequantize") -> "Int8Linear":
        """Quantize an ``nn.Linear``'s weight per output channel (absmax); the bias is kept in float32."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel)
        q, scale = absmax_quantize(linear.weight.detach(), dim=0)            # [out, in], [out, 1]
        layer.weight_int8.copy_(q)
        layer.scale.copy_(scale[:, 0])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> Tensor:
        """``[out, in]`` float32: the weight this layer multiplies by."""
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear({self.in_features} -> {self.out_features}) expects inputs [..., "
                             f"{self.in_features}], got {tuple(x.shape)}")
        if self.kernel == "int8":
            flat = x.reshape(-1, self.in_features).float().contiguous()
            y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale).reshape(*x.shape[:-1], self.out_features)
        else:
            y = x.float() @ self.dequantized_weight().T
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def quantize_linears(model: nn.Module, kernel: str = "dequantize", skip: Sequence[str] = ("lm_head",)) -> nn.Module:
    """Replace (in place) every ``nn.Linear`` of ``model`` whose name does not contain one of ``skip`` by an
    :class:`Int8Linear`; returns ``model``. Skipped by default: the output layer (tied to the embedding in
    the course's GPT and in SmolLM2: quantizing it would store a second copy)."""
    if kernel == "int8" and not int8_kernel_available():
        raise ValueError("this PyTorch has no torch._weight_int8pack_mm; use kernel='dequantize'")
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not any(s in name for s in skip)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(module, kernel))
    return model


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer in memory (a tensor shared by two modules counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (written to memory, not to a file)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def int8_matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x [n, in] @ w[out, in].T`` with both sides in int8: ``x`` one absmax scale per row (token), ``w`` one
    per output row; the integer products summed exactly (in float64, which holds every int32 sum), then
    rescaled by both scales. Vector-wise quantization, LLM.int8()'s int8 part."""
    qx, sx = absmax_quantize(x, dim=0)                                        # [n, in], [n, 1]
    qw, sw = absmax_quantize(w, dim=0)                                        # [out, in], [out, 1]
    acc = qx.double() @ qw.double().T                                         # [n, out], exact integer sums
    return (acc * sx.double() * sw.double().T).float()


def llm_int8_matmul(x: Tensor, w: Tensor, threshold: float = 6.0) -> tuple[Tensor, Tensor]:
    """LLM.int8()'s mixed-precision product: ``x [n, in]``, ``w [out, in]`` -> ``(x @ w.T [n, out], outlier
    columns [k])``. The input features (columns of ``x``) holding any ``|value| >= threshold`` are multiplied
    in float32; the rest in int8 (:func:`int8_matmul`). With no outliers it is :func:`int8_matmul`."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"llm_int8_matmul needs x [n, in] and w [out, in], got {tuple(x.shape)} and {tuple(w.shape)}")
    outliers = (x.abs() >= threshold).any(dim=0)                              # [in]
    cols = outliers.nonzero().flatten()
    out = x[:, outliers] @ w[:, outliers].T if bool(outliers.any()) else torch.zeros(x.shape[0], w.shape[0])
    if bool((~outliers).any()) and bool(x[:, ~outliers].any()):
        out = out + int8_matmul(x[:, ~outliers], w[:, ~outliers])
    return out, cols


# =============================================================================================
# Quality figures
# =============================================================================================

@torch.no_grad()
def perplexity(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 64) -> float:
    """``exp`` of the mean next-token cross-entropy of ``model`` on windows ``x, y [n, t]``."""
    from course.lm import sequence_loss

    return math.exp(sequence_loss(model, x, y, batch_size))


@torch.no_grad()
def next_token_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 64) -> float:
    """The fraction of positions of ``x, y [n, t]`` where ``model``'s most likely next token is ``y``."""
    correct = 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(dim=-1) == y[i:i + batch_size]).sum())
    return correct / y.numel()


def train_lm(model: nn.Module, train_ids: Tensor, steps: int, *, context_length: int, batch_size: int = 32,
             lr: float = 3e-3, loss: Any = None, seed: int = 0, desc: str = "training"):
    """Train ``model`` on random windows of ``train_ids [n]`` with ``course.train.train`` (AdamW, warm-up,
    cosine decay, clipping) and return its ``History``. ``loss(model, x, y) -> scalar`` (default: the
    next-token cross-entropy of ``model(x)``); the windows are the same for the same ``seed``."""
    from course.lm import lm_loss, random_windows
    from course.seed import seed_everything
    from course.train import train

    seed_everything(seed)
    windows = torch.Generator().manual_seed(seed)
    loss = loss or (lambda m, x, y: lm_loss(m(x), y))
    return train(model, next_batch=lambda step: random_windows(train_ids, batch_size, context_length, generator=windows),
                 loss_fn=lambda m, batch: loss(m, *batch), steps=steps, lr=lr, warmup=max(10, steps // 20), desc=desc)


def load_smollm2_hf() -> tuple[nn.Module | None, Any, str]:
    """SmolLM2-135M-Instruct as a ``transformers`` model in float32, its tokenizer and one line saying what
    happened; ``(None, None, line)`` when the converted folder is missing (it is not converted here: lesson 12
    or the set-up does that once)."""
    from course import llm

    folder = llm.ensure_converted(convert_if_missing=False)
    if folder is None:
        return None, None, f"{llm.LAST_MESSAGE} The SmolLM2 cells are skipped."
    model, tokenizer = llm.load_hf_folder(folder)
    return model, tokenizer, llm.LAST_MESSAGE


@torch.no_grad()
def smollm2_perplexity(model: nn.Module, ids: Tensor) -> float:
    """Perplexity of a Hugging Face causal LM on one sequence ``ids [1, n]`` (``exp`` of its mean loss)."""
    return math.exp(float(model(input_ids=ids, labels=ids).loss))


# =============================================================================================
# 3. Distillation
# =============================================================================================

def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 2.0,
                      alpha: float = 0.5) -> Tensor:
    """Hinton et al.'s loss: ``alpha * T**2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, targets)``.

    ``student_logits, teacher_logits [..., vocab]``, ``targets [...]`` (ids) -> a scalar. ``p^T`` is the
    softmax of the logits divided by ``T``; the KL divergence is summed over the vocabulary and averaged over
    positions (``reduction="batchmean"`` of ``F.kl_div`` on the flattened positions). The ``T**2`` keeps the
    soft term's gradients the same size whatever ``T`` (they shrink as ``1 / T**2`` otherwise).
    ``alpha=0`` is training on the hard labels alone.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have one shape, got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)} (the same vocabulary, the same positions)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, vocab).detach() / temperature, dim=-1)
    soft = (t.exp() * (t - s)).sum(dim=-1).mean() * temperature ** 2
    hard = F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


# =============================================================================================
# 4. Mixture of experts
# =============================================================================================

def top_k_routing(router_logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``router_logits [tokens, n_experts]`` -> ``(weights [tokens, k], experts [tokens, k])``: the softmax over
    experts, its ``k`` largest entries (largest first, as ``torch.topk``; tied experts in no set order), their
    probabilities renormalised to sum to 1 per token (Mixtral's rule)."""
    n = router_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"the router picks k of {n} experts: k must be an integer in 1..{n}, got {k!r}")
    probs = router_logits.float().softmax(dim=-1)
    top, experts = probs.topk(k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), experts


def load_balancing_loss(router_probs: Tensor, experts: Tensor, n_experts: int) -> Tensor:
    """The Switch Transformer's auxiliary loss: ``n_experts * sum_i f_i * P_i``, where ``f_i`` is the fraction
    of the routing choices (tokens x k) that went to expert ``i`` and ``P_i`` the mean router probability of
    expert ``i``. ``router_probs [tokens, n_experts]``, ``experts [tokens, k]`` -> a scalar, 1 when routing is
    perfectly even, up to ``n_experts`` when everything goes to one expert. Only ``P`` carries a gradient."""
    counts = torch.bincount(experts.flatten(), minlength=n_experts).float()
    f = counts / counts.sum()
    return n_experts * (f * router_probs.mean(dim=0)).sum()


class MoEFeedForward(nn.Module):
    """A mixture-of-experts feed-forward layer: ``forward(x [..., d_model]) -> [..., d_model]``.

    A router (``nn.Linear(d_model, n_experts, bias=False)``) scores each token; :func:`top_k_routing` keeps
    ``k`` experts (each a :class:`course.layers.FeedForward` of width ``d_ff``) and their weights; each
    expert runs on its tokens only, and the outputs are summed with the weights. After a forward pass,
    ``aux_loss`` holds :func:`load_balancing_loss` and ``counts [n_experts]`` the routing choices per expert.
    Parameters: ``n_experts`` experts in all, ``k`` of them active per token.

    With ``k = 1`` the renormalised weight would always be exactly 1, and the router would get no gradient from
    the model's loss; so, as in the Switch Transformer, top-1 scales the expert's output by its raw router
    probability instead. With ``k > 1`` the weights are renormalised over the chosen experts (Mixtral).
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int = 1, activation: str = "gelu_tanh"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
            raise ValueError(f"the router picks k of {n_experts} experts: k must be an integer in 1..{n_experts}, "
                             f"got {k!r}")
        self.d_model, self.n_experts, self.k = d_model, n_experts, k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(d_model, d_ff, activation) for _ in range(n_experts))
        self.aux_loss: Tensor = torch.zeros(())
        self.counts: Tensor = torch.zeros(n_experts, dtype=torch.long)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoEFeedForward(d_model={self.d_model}) expects x [..., {self.d_model}], got {tuple(x.shape)}")
        flat = x.reshape(-1, self.d_model)                                    # [tokens, d]
        logits = self.router(flat)                                            # [tokens, E]
        weights, chosen = top_k_routing(logits, self.k)                       # [tokens, k] each
        if self.k == 1:                                                       # Switch: the raw probability
            weights = logits.float().softmax(dim=-1).gather(-1, chosen)
        self.aux_loss = load_balancing_loss(logits.softmax(dim=-1), chosen, self.n_experts)
        self.counts = torch.bincount(chosen.flatten(), minlength=self.n_experts).detach()
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)                # which tokens chose e, in which slot
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None].to(flat.dtype))
        return out.reshape(x.shape)


def moe_gpt(model: GPT, n_experts: int, k: int, d_ff: int) -> GPT:
    """``model`` with every block's feed-forward replaced by a fresh :class:`MoEFeedForward` (in place)."""
    for block in model.blocks:
        block.ffn = MoEFeedForward(model.config.d_model, d_ff, n_experts, k, model.config.activation)
    return model


def moe_aux_loss(model: nn.Module) -> Tensor:
    """The mean of the MoE layers' ``aux_loss`` after a forward pass (0 for a model without one)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoEFeedForward)]
    return torch.stack(losses).mean() if losses else torch.zeros(())


@torch.no_grad()
def expert_usage(model: nn.Module, x: Tensor) -> Tensor:
    """``[layers, n_experts]``: the fraction of routing choices each MoE layer gives each expert on ``x``."""
    with eval_mode(model):
        model(x)
    counts = torch.stack([m.counts.float() for m in model.modules() if isinstance(m, MoEFeedForward)])
    return counts / counts.sum(dim=-1, keepdim=True)


# =============================================================================================
# 5. Speculative decoding
# =============================================================================================

def acceptance_count(draft_tokens: Tensor, draft_probs: Tensor, target_probs: Tensor, uniforms: Tensor) -> int:
    """How many of the draft's ``k`` proposed tokens the target accepts (the rule of Leviathan et al. 2023).

    ``draft_tokens [k]`` (long), ``draft_probs [k, vocab]`` (q: the draft's distribution at each proposal),
    ``target_probs [k, vocab]`` (p: the target's at the same positions), ``uniforms [k]`` (draws in [0, 1)).
    Token ``i`` is accepted when ``uniforms[i] < p_i(x_i) / q_i(x_i)`` (always when ``p >= q``), and checking
    stops at the first rejection: the result is the number of leading acceptances, 0..k. Greedy decoding is
    the case of one-hot ``p`` and ``q``: a token is accepted exactly when it is the target's argmax.
    """
    k = draft_tokens.shape[0]
    idx = draft_tokens.long()[:, None]
    p = target_probs[:k].gather(1, idx)[:, 0]
    q = draft_probs.gather(1, idx)[:, 0]
    accepted = uniforms * q < p                                                # u < p / q without dividing by 0
    rejected = (~accepted).nonzero()
    return int(rejected[0, 0]) if rejected.numel() else k


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """Where a draft token is rejected, the next token is drawn from ``norm(max(0, p - q))`` (``[..., vocab]``):
    with it, speculative sampling gives exactly the target's distribution ``p`` (see the tests)."""
    r = (p - q).clamp(min=0)
    total = r.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=1e-30), p)


@dataclass
class SpeculativeResult:
    """What :func:`speculative_generate` did: the tokens, and how many draft proposals were accepted."""

    tokens: Tensor          # [prompt + new]
    proposed: int           # draft tokens proposed in all
    accepted: int           # of them accepted by the target
    target_calls: int       # forward passes of the target: one per round, plus the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.proposed)


def _crop(caches: Sequence[KVCache], length: int) -> None:
    """Forget every cached position from ``length`` on (the rejected proposals)."""
    for c in caches:
        if c.k is not None and c.k.shape[-2] > length:
            c.k, c.v = c.k[..., :length, :], c.v[..., :length, :]


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt: Tensor, max_new_tokens: int, k: int = 4) -> SpeculativeResult:
    """Greedy speculative decoding: ``prompt [seq]`` (one sequence) -> the target's own greedy continuation.

    Each round the draft proposes ``k`` tokens greedily (one cached step each); the target reads them all in
    one cached forward pass, which gives its own choice after each prefix; the proposals are kept up to the
    first disagreement, and the target's token there (or, when all ``k`` agree, the token after them) is
    added: every round adds between 1 and ``k + 1`` tokens, each exactly what the target would choose.
    The draft must share the target's vocabulary (one tokenizer); otherwise one line says so.
    """
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                         f"({target.config.vocab_size}): the target checks the draft's token ids, so both must use "
                         "one tokenizer")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an integer >= 1, got {k!r}")
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"speculative_generate takes one prompt of token ids [seq], got shape {tuple(prompt.shape)}")
    limit = min(target.context_length, draft.context_length)
    if prompt.numel() + max_new_tokens + k > limit:
        raise ValueError(f"{prompt.numel()} prompt + {max_new_tokens} new + {k} draft tokens exceed the context "
                         f"length {limit}")
    device = next(target.parameters()).device
    prompt = prompt.to(device)
    t_caches = [KVCache(target.context_length) for _ in target.blocks]
    d_caches = [KVCache(draft.context_length) for _ in draft.blocks]
    with eval_mode(target), eval_mode(draft):
        seq = prompt.tolist()
        calls = 0
        if prompt.numel() > 1:                                                # the prefill: all but the last token
            target(prompt[None, :-1], caches=t_caches)
            draft(prompt[None, :-1], caches=d_caches)
            calls = 1
        proposed = accepted = 0
        # invariant: both caches hold seq[:-1]; seq[-1] is read next
        while len(seq) - prompt.numel() < max_new_tokens:
            base = len(seq) - 1
            tokens = []
            last = seq[-1]
            for _ in range(k):                                                # the draft, one cached step each
                last = int(draft(torch.tensor([[last]], device=device), caches=d_caches)[0, -1].argmax())
                tokens.append(last)
            block = torch.tensor([[seq[-1], *tokens]], device=device)                         # [1, k + 1]
            choices = target(block, caches=t_caches)[0].argmax(dim=-1).tolist()  # the target after each prefix
            calls += 1
            n = 0
            while n < k and tokens[n] == choices[n]:
                n += 1
            proposed += k
            accepted += n
            seq += tokens[:n] + [choices[n]]
            _crop(t_caches, base + n + 1)
            _crop(d_caches, base + n + 1)
            if n == k:                                                        # the draft never read its last proposal
                draft(torch.tensor([[tokens[-1]]], device=device), caches=d_caches)
    out = torch.tensor(seq[:prompt.numel() + max_new_tokens])
    return SpeculativeResult(out, proposed, accepted, calls)


# =============================================================================================
# The claims table
# =============================================================================================

def verdict(measured: float, claimed: float, higher_is_better: bool = True, tolerance: float = 0.0) -> str:
    """``"holds"`` when ``measured`` reaches ``claimed`` (within ``tolerance`` of it, relative), else ``"falls short"``."""
    if higher_is_better:
        return "holds" if measured >= claimed * (1 - tolerance) else "falls short"
    return "holds" if measured <= claimed * (1 + tolerance) else "falls short"

