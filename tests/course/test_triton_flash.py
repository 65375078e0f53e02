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
