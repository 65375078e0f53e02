"""The Triton FlashAttention kernel: correct against PyTorch's SDPA in Triton's interpreter on a CPU
(a fresh process, since the interpreter must be chosen before Triton is imported), and compiled on a GPU."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (optional: pip install triton)")


def test_module_imports_and_explains_itself_with_or_without_triton():
    from course import triton_flash as tf
    assert isinstance(tf.triton_status(), str) and "\n" not in tf.triton_status()
    if not tf.HAVE_TRITON:
        with pytest.raises(ImportError, match="Triton is not installed"):
            tf.flash_attention_triton(*(torch.randn(1, 1, 16, 16) for _ in range(3)))


@needs_triton
def test_kernel_rejects_unsupported_head_sizes_and_shapes():
    from course import triton_flash as tf
    with pytest.raises(ValueError, match="head size 24"):
        tf.flash_attention_triton(*(torch.randn(1, 1, 16, 24) for _ in range(3)))
    with pytest.raises(ValueError, match="share one shape"):
        tf.flash_attention_triton(torch.randn(1, 1, 16, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16))


INTERPRETER_CHECK = textwrap.dedent("""
    import os, torch, torch.nn.functional as F
    os.environ["TRITON_INTERPRET"] = "1"
    from course.triton_flash import flash_attention_triton, INTERPRET
    assert INTERPRET
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape, causal, dtype, tol in [((1, 2, 40, 16), False, torch.float32, 1e-5),
                                      ((1, 2, 40, 16), True, torch.float32, 1e-5),
                                      ((2, 1, 33, 32), True, torch.float32, 1e-5),
                                      ((1, 1, 48, 16), False, torch.float16, 2e-3)]:
        q, k, v = (torch.randn(*shape, generator=g).to(dtype) for _ in range(3))
        ours = flash_attention_triton(q, k, v, causal=causal).float()
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        err = (ours - ref).abs().max().item()
        assert err < tol, (shape, causal, dtype, err)   # float32: 1e-5; float16 inputs/output: 2e-3
    try:
        flash_attention_triton(*(torch.randn(1, 1, 16, 16, dtype=torch.bfloat16) for _ in range(3)))
        raise SystemExit("bfloat16 in the interpreter should be refused")
    except ValueError as exc:
        assert "bfloat16" in str(exc)
    print("ok")
""")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter test is for machines without CUDA")
def test_kernel_in_triton_interpreter_matches_torch_sdpa():
    done = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_kernel_matches_sdpa_on_gpu(causal):
    import torch.nn.functional as F

    from course.triton_flash import flash_attention_triton
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    ours = flash_attention_triton(q, k, v, causal=causal).float()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=2e-2, rtol=2e-2)  # bfloat16 output


# ---------------------------------------------------------------------------------------------
# Without a GPU: the choices for simulated GPUs, and the kernel compiled ahead of time for real targets
# ---------------------------------------------------------------------------------------------
def test_float32_products_are_asked_for_in_ieee_precision():
    from course import triton_flash as tf
    assert tf.dot_precision(torch.float32) == "ieee"
    assert tf.dot_precision(torch.float16) == tf.dot_precision(torch.bfloat16) == "tf32"   # ignored for 16-bit inputs
    assert tf.configs_for(torch.float32) == tf.CONFIGS_FLOAT32 and tf.configs_for(torch.bfloat16) == tf.CONFIGS_16BIT


@needs_triton
@pytest.mark.parametrize("name, capability, dtype, baseline, words", [
    ("Tesla T4", (7, 5), torch.float16, "efficient", ["sm 7.5", "float16", "memory-efficient"]),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16, "flash", ["sm 8.0", "bfloat16", "flash"]),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16, "flash", ["sm 9.0", "bfloat16", "flash"]),
])
def test_dtype_baseline_and_status_follow_the_compute_capability(monkeypatch, name, capability, dtype, baseline, words):
    from course import triton_flash as tf
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert tf.gpu_dtype() == dtype and tf.sdpa_baseline() == baseline
    status = tf.triton_status()
    assert name in status and all(w in status for w in words) and "\n" not in status
    if capability < (8, 0):
        assert "compiles" in status and "no bfloat16 below sm 8.0" in status and "tensor cores only from sm 8.0" in status


AHEAD_OF_TIME = textwrap.dedent("""
    # Compile the course's kernel for GPUs that are not here: triton.compile with a GPUTarget needs no driver.
    import json, os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton                                   # before course.triton_flash: no interpreter
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import torch
    import course.triton_flash as tf
    assert not tf.INTERPRET
    fn = triton.jit(tf._attn_fwd)
    CONSTEXPRS = ("HEAD_DIM", "BLOCK_M", "BLOCK_N", "CAUSAL", "DOT_PRECISION")

    def compile_(arch, dtype, head_dim, config, precision):
        bm, bn, warps, stages = config
        sig = {n: (f"*{dtype}" if n in "QKVO" else "fp32" if n == "sm_scale" else
                   "constexpr" if n in CONSTEXPRS else "i32") for n in fn.arg_names}
        consts = dict(HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=True, DOT_PRECISION=precision)
        return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})

    out = {"a100": [], "t4": []}
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for config in tf.configs_for(torch_dtype):
            k = compile_(80, dtype, 256, config, tf.dot_precision(torch_dtype))
            out["a100"].append([dtype, config, k.metadata.shared])
    for head_dim in (128, 256):                     # a T4 (sm 7.5, 64 KB): float16, the lesson's dtype there
        smallest = min(tf.CONFIGS_16BIT, key=lambda c: c[0] * c[1])
        out["t4"].append([head_dim, smallest, compile_(75, "fp16", head_dim, smallest, "tf32").metadata.shared])
    ptx = {p: compile_(80, "fp32", 64, (32, 32, 4, 1), p).asm["ptx"] for p in ("tf32", "ieee")}
    out["tf32_mma"] = {p: ".tf32.tf32." in text for p, text in ptx.items()}   # mma.sync...f32.tf32.tf32.f32
    print(json.dumps(out))
""")


@needs_triton
def test_every_config_for_head_size_256_fits_an_a100_and_float32_asks_for_ieee_products():
    """Compiled for sm 8.0 and sm 7.5 without a GPU (Triton's ahead-of-time path; about a minute the first
    time, then Triton's cache answers)."""
    import json
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AHEAD_OF_TIME], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    from course import triton_flash as tf
    too_big = [(dtype, config, shared) for dtype, config, shared in out["a100"] if shared > tf.A100_SHARED_MEMORY]
    assert len(out["a100"]) == len(tf.CONFIGS_16BIT) + len(tf.CONFIGS_FLOAT32) and not too_big, too_big
    assert all(shared <= 65_536 for _, _, shared in out["t4"]), out["t4"]     # a T4's 64 KB per block
    assert out["tf32_mma"] == {"tf32": True, "ieee": False}    # Triton's default would use TF32 tensor cores
