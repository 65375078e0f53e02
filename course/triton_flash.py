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

Precision: float32 inputs are multiplied in IEEE float32 (Triton's default for float32 ``tl.dot``
on NVIDIA GPUs is TF32, with errors near 1e-3); float16 and bfloat16 use the tensor cores, which
take bfloat16 only from compute capability 8.0 (on a T4, sm 7.5, use float16).

    out = flash_attention_triton(q, k, v, causal=True)          # q, k, v: [batch, heads, seq, d]
"""
from __future__ import annotations

import math
import os
import sys
from functools import lru_cache

import torch

from course.device import BF16_CAPABILITY, cuda_capability, half_dtype

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


def _capability() -> tuple[int, int]:
    return cuda_capability("cuda")


def gpu_dtype() -> torch.dtype:
    """The 16-bit dtype the kernel is timed in on this CUDA GPU: bfloat16 from sm 8.0, float16 below
    (:func:`course.device.half_dtype`)."""
    return half_dtype("cuda")


def sdpa_baseline() -> str:
    """The SDPA backend to compare with on this CUDA GPU: ``"flash"`` from sm 8.0; below it (a T4),
    where PyTorch's flash and cuDNN kernels refuse to run, the memory-efficient kernel ``"efficient"``."""
    return "flash" if _capability() >= BF16_CAPABILITY else "efficient"


def triton_status() -> str:
    """One line: whether the kernel can run here, and how."""
    if not HAVE_TRITON:
        return TRITON_MISSING
    if torch.cuda.is_available():
        major, minor = _capability()
        if (major, minor) >= BF16_CAPABILITY:
            return (f"Triton {triton.__version__}: the kernel compiles for {torch.cuda.get_device_name()} "
                    f"(sm {major}.{minor}) and is timed in bfloat16 against SDPA's flash kernel.")
        return (f"Triton {triton.__version__}: the kernel compiles for {torch.cuda.get_device_name()} "
                f"(sm {major}.{minor}) in float16 and float32 (no bfloat16 below sm 8.0) and is timed in float16 "
                "against SDPA's memory-efficient kernel (flash needs sm 8.0); recent Triton versions use tensor "
                "cores only from sm 8.0, so expect it far behind.")
    return (f"Triton {triton.__version__} without a CUDA GPU: the kernel runs in Triton's interpreter "
            "(NumPy semantics, slow: tiny sizes only).")


def _attn_fwd(Q, K, V, O, sm_scale,
              stride_qz, stride_qh, stride_qm, stride_qd,
              stride_kz, stride_kh, stride_kn, stride_kd,
              stride_vz, stride_vh, stride_vn, stride_vd,
              stride_oz, stride_oh, stride_om, stride_od,
              H, N_CTX,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
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
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale                 # [BLOCK_M, BLOCK_N]
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
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=row_ok)


# Tile sizes the autotuner tries: (BLOCK_M, BLOCK_N, num_warps, num_stages), one list for 16-bit inputs
# and one for float32 (whose IEEE products run without tensor cores and keep larger tiles in shared
# memory). A program's shared memory grows with the tiles and the head size. Compiled for an A100 (sm 8.0;
# 163 KB per block at most) with Triton 3.9, every config here fits at every head size up to 256:
# tests/course/test_triton_flash.py compiles them for sm 8.0 without a GPU and checks. A config that does
# not fit a smaller GPU (a T4: 64 KB; sm 8.6/8.9: 99 KB) is skipped by the autotuner; on a T4 the smallest
# 16-bit one fits at every head size up to 256.
CONFIGS_16BIT = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4),
                 (64, 32, 4, 2), (32, 32, 4, 2)]
CONFIGS_FLOAT32 = [(64, 32, 4, 2), (32, 32, 4, 2), (64, 32, 4, 1)]
A100_SHARED_MEMORY = 166_912      # bytes: the most shared memory one program (block) may use on sm 8.0


def configs_for(dtype: torch.dtype) -> list[tuple[int, int, int, int]]:
    """The tile configurations the autotuner tries for inputs of ``dtype``."""
    return CONFIGS_FLOAT32 if dtype == torch.float32 else CONFIGS_16BIT


def _prune(configs, named_args, **kwargs):
    """The autotuner's early prune: keep the configs of the inputs' dtype (``configs_for``)."""
    wanted = set(configs_for(named_args["Q"].dtype))
    return [c for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]


@lru_cache(maxsize=None)
def _kernel():
    """The jitted kernel: autotuned over tile sizes when compiled, plain in the interpreter."""
    fn = triton.jit(_attn_fwd)
    if INTERPRET:
        return fn
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
               for bm, bn, w, s in dict.fromkeys(CONFIGS_16BIT + CONFIGS_FLOAT32)]
    return triton.autotune(configs=configs, key=["N_CTX", "HEAD_DIM", "CAUSAL", "DOT_PRECISION"],
                           prune_configs_by={"early_config_prune": _prune})(fn)


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
    if not INTERPRET and q.dtype == torch.bfloat16 and _capability() < BF16_CAPABILITY:
        major, minor = _capability()
        raise ValueError(f"this kernel takes bfloat16 from compute capability 8.0 (bfloat16 tensor cores); this GPU "
                         f"is sm {major}.{minor}: use float16")
    batch, heads, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    args = (q, k, v, out, scale, *q.stride(), *k.stride(), *v.stride(), *out.stride(), heads, n)
    precision = dot_precision(q.dtype)
    if INTERPRET:
        grid = (triton.cdiv(n, block_m), batch * heads)
        _kernel()[grid](*args, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=bool(causal),
                        DOT_PRECISION=precision)
    else:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_M"]), batch * heads)
        _kernel()[grid](*args, HEAD_DIM=d, CAUSAL=bool(causal), DOT_PRECISION=precision)
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: ``"ieee"`` (true float32 products) for
    float32, where Triton's default on NVIDIA GPUs is TF32 (a 10-bit mantissa); the default ``"tf32"``,
    which does not apply to them, for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def time_against_sdpa(seq: int = 4096, head_dim: int = 128, batch: int = 4, heads: int = 16,
                      dtype: torch.dtype | None = None, causal: bool = False, baseline: str | None = None) -> dict:
    """On a CUDA GPU: forward ms and TFLOP/s of this kernel and of an SDPA backend, their ratio
    (triton TFLOP/s / baseline TFLOP/s) and the largest difference between the outputs.

    ``dtype`` defaults to :func:`gpu_dtype` (bfloat16 from sm 8.0, float16 below) and ``baseline`` to
    :func:`sdpa_baseline` (``"flash"`` from sm 8.0, ``"efficient"`` below, where flash refuses to run).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("time_against_sdpa needs a CUDA GPU")
    if not HAVE_TRITON:
        raise ImportError(TRITON_MISSING)
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from course.bench import benchmark
    from course.efficient import attention_flops
    dtype = gpu_dtype() if dtype is None else dtype
    baseline = sdpa_baseline() if baseline is None else baseline
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[baseline]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=dtype, generator=g) for _ in range(3))

    def sdpa():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def ours():
        return flash_attention_triton(q, k, v, causal=causal)

    diff = float((ours().float() - sdpa().float()).abs().max())
    t_ours, t_sdpa = benchmark(ours, "triton", device="cuda"), benchmark(sdpa, baseline, device="cuda")
    flops = attention_flops(batch, heads, seq, head_dim, causal)
    tf_ours, tf_sdpa = flops / t_ours.median_ms / 1e9, flops / t_sdpa.median_ms / 1e9
    return {"seq": seq, "head_dim": head_dim, "batch": batch, "heads": heads, "dtype": str(dtype).removeprefix("torch."),
            "causal": causal, "baseline": baseline, "triton_ms": t_ours.median_ms, "baseline_ms": t_sdpa.median_ms,
            "triton_tflops": tf_ours, "baseline_tflops": tf_sdpa, "ratio": tf_ours / tf_sdpa, "max_abs_diff": diff,
            "device": f"{torch.cuda.get_device_name()} (sm {'.'.join(map(str, _capability()))})"}
