"""FlashAttention's forward pass as a Triton kernel: the algorithm of
:func:`course.efficient.flash_attention_torch`, with each (query tile, batch x head) pair handled
by one GPU program that keeps its running max ``m``, sum ``l`` and accumulator in registers.

Triton is optional. Without it, :data:`TRITON_MISSING` is the one-line explanation and
:func:`flash_attention_triton` raises ``ImportError`` with it. With it:

- on a CUDA GPU, the kernel is compiled (and autotuned over a few tile sizes);
- on a machine without CUDA, Triton's interpreter runs the same kernel on CPU tensors with NumPy
  semantics: slow, but it checks the algorithm and the indexing anywhere. The interpreter must be
  chosen before Triton is first imported, so importing this module without CUDA sets
  ``TRITON_INTERPRET=1`` (unless Triton was imported already).

    out = flash_attention_triton(q, k, v, causal=True)          # q, k, v: [batch, heads, seq, d]
"""
from __future__ import annotations

import math
import os
import sys
from functools import lru_cache

import torch

# Without a CUDA GPU, compiled Triton kernels cannot run; Triton's interpreter can, but it must be
# switched on before Triton is first imported (its standard library is jitted at import time).
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # optional dependency
    triton = tl = None
    HAVE_TRITON = False

TRITON_MISSING = ("Triton is not installed (`pip install triton`; Linux wheels only): the Triton kernel "
                  "is skipped, and the lesson shows its GPU result from the kept reference table.")
HEAD_DIMS = (16, 32, 64, 128, 256)


def triton_status() -> str:
    """One line: whether the kernel can run here, and how."""
    if not HAVE_TRITON:
        return TRITON_MISSING
    if torch.cuda.is_available():
        return f"Triton {triton.__version__}: the kernel compiles for {torch.cuda.get_device_name()}."
    return (f"Triton {triton.__version__} without a CUDA GPU: the kernel runs in Triton's interpreter "
            "(NumPy semantics, slow: tiny sizes only).")


def _attn_fwd(Q, K, V, O, sm_scale,
              stride_qz, stride_qh, stride_qm, stride_qd,
              stride_kz, stride_kh, stride_kn, stride_kd,
              stride_vz, stride_vh, stride_vn, stride_vd,
              stride_oz, stride_oh, stride_om, stride_od,
              H, N_CTX,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr):
    """One program: BLOCK_M queries of one (batch, head) against all (allowed) keys, BLOCK_N at a time."""
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = off_hz // H
    off_h = off_hz % H
    q_base = Q + off_z * stride_qz + off_h * stride_qh
    k_base = K + off_z * stride_kz + off_h * stride_kh
    v_base = V + off_z * stride_vz + off_h * stride_vh
    o_base = O + off_z * stride_oz + off_h * stride_oh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < N_CTX
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok, other=0.0)

    # Running state of the online softmax, in float32. exp2 with log2(e) folded into the scale.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    hi = N_CTX
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M, N_CTX)   # tiles above the diagonal are skipped
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N_CTX
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale                 # [BLOCK_M, BLOCK_N]
        valid = col_ok[None, :] & (offs_m[:, None] >= 0)
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= cols[None, :])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)                     # rescale what was summed so far
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=row_ok)


_GPU_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)]


@lru_cache(maxsize=None)
def _kernel():
    """The jitted kernel: autotuned over tile sizes when compiled, plain in the interpreter."""
    fn = triton.jit(_attn_fwd)
    if INTERPRET:
        return fn
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
               for bm, bn, w, s in _GPU_CONFIGS]
    return triton.autotune(configs=configs, key=["N_CTX", "HEAD_DIM", "CAUSAL"])(fn)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one shape [batch, heads, seq, d]: "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head size {q.shape[-1]} is not supported by this kernel "
                         f"(supported: {', '.join(map(str, HEAD_DIMS))})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           scale: float | None = None, block_m: int = 16, block_n: int = 16) -> torch.Tensor:
    """Attention with the Triton kernel. q, k, v: [batch, heads, seq, d] (same shape) -> [batch, heads, seq, d].

    Compiled on a GPU (tile sizes autotuned); in the interpreter (``INTERPRET``: set when this module
    is imported on a machine without CUDA) on CPU tensors, with tiles ``block_m`` x ``block_n``.
    """
    if not HAVE_TRITON:
        raise ImportError(TRITON_MISSING)
    _check(q, k, v)
    if INTERPRET and q.device.type != "cpu":
        raise ValueError("Triton's interpreter (TRITON_INTERPRET=1) runs on CPU tensors; move q, k, v to the CPU")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"compiled Triton kernels need CUDA tensors, got {q.device}; on a CPU set "
                         "TRITON_INTERPRET=1 before Triton is first imported to use its interpreter")
    if INTERPRET and q.dtype == torch.bfloat16:
        # Measured with Triton 3.9: the interpreter's tl.dot returns garbage for bfloat16 inputs.
        raise ValueError("Triton's interpreter mishandles bfloat16 dot products: on a CPU use float32 or float16")
    batch, heads, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    args = (q, k, v, out, scale, *q.stride(), *k.stride(), *v.stride(), *out.stride(), heads, n)
    if INTERPRET:
        grid = (triton.cdiv(n, block_m), batch * heads)
        _kernel()[grid](*args, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=bool(causal))
    else:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_M"]), batch * heads)
        _kernel()[grid](*args, HEAD_DIM=d, CAUSAL=bool(causal))
    return out


def time_against_flash(seq: int = 4096, head_dim: int = 128, batch: int = 4, heads: int = 16,
                       dtype: torch.dtype = torch.bfloat16, causal: bool = False) -> dict:
    """On a CUDA GPU: forward ms and TFLOP/s of this kernel and of SDPA's flash backend, their ratio
    (triton TFLOP/s / flash TFLOP/s) and the largest difference between the outputs."""
    if not torch.cuda.is_available():
        raise RuntimeError("time_against_flash needs a CUDA GPU")
    if not HAVE_TRITON:
        raise ImportError(TRITON_MISSING)
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from course.bench import benchmark
    from course.efficient import attention_flops
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=dtype, generator=g) for _ in range(3))

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def ours():
        return flash_attention_triton(q, k, v, causal=causal)

    diff = float((ours().float() - flash().float()).abs().max())
    t_ours, t_flash = benchmark(ours, "triton", device="cuda"), benchmark(flash, "flash", device="cuda")
    flops = attention_flops(batch, heads, seq, head_dim, causal)
    tf_ours, tf_flash = flops / t_ours.median_ms / 1e9, flops / t_flash.median_ms / 1e9
    return {"seq": seq, "head_dim": head_dim, "batch": batch, "heads": heads, "dtype": str(dtype).removeprefix("torch."),
            "causal": causal, "triton_ms": t_ours.median_ms, "flash_ms": t_flash.median_ms,
            "triton_tflops": tf_ours, "flash_tflops": tf_flash, "ratio": tf_ours / tf_flash, "max_abs_diff": diff}
