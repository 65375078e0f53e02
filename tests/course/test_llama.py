"""course.llama (lesson 12): each piece checked against PyTorch, to a stated tolerance."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.llama import centre


def test_centre_is_layer_norms_numerator():
    # LayerNorm without scale or shift is (x - mean) / std, so centring is LayerNorm times the std.
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    std = x.var(dim=-1, unbiased=False, keepdim=True).sqrt()
    torch.testing.assert_close(centre(x), F.layer_norm(x, (8,), eps=0.0) * std, atol=1e-5, rtol=1e-5)


def test_centred_vectors_have_zero_mean_and_keep_their_shape():
    x = torch.randn(5, 7) + 3.0
    out = centre(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(5), atol=1e-6, rtol=0)
