"""Positional encodings: the sinusoidal formula, the offset matrix, learned tables and RoPE."""
from __future__ import annotations

import math

import pytest
import torch

from course.attention import MultiHeadAttention, scaled_dot_product_attention
from course.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rope,
    describe_encoding_entry,
    encoding_entry,
    permutation_gap,
    permute_rope_rows,
    relative_offset_matrix,
    rope_halves_permutation,
    sinusoidal_encoding,
    sinusoidal_frequencies,
)
from course.seed import seed_everything


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


# ------------------------------------------------------------------------------------ sinusoidal


def test_sinusoidal_encoding_matches_the_formula_at_hand_picked_entries():
    pe = sinusoidal_encoding(60, 8)
    assert pe.shape == (60, 8) and pe.dtype == torch.float32
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), computed by hand.
    for pos, i in [(0, 0), (1, 0), (7, 1), (42, 2), (59, 3)]:
        angle = pos / 10000 ** (2 * i / 8)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)  # float32 of a float64 value
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    # Position 0 is (0, 1, 0, 1, ...); dimension 0 at position 1 is sin(1).
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4), atol=0, rtol=0)
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-7)


def test_sinusoidal_frequencies_go_from_one_down_towards_one_over_base():
    omega = sinusoidal_frequencies(16)
    assert omega.shape == (8,)
    assert omega[0].item() == 1.0
    assert omega[-1].item() == pytest.approx(10000 ** (-14 / 16), rel=1e-6)
    assert bool((omega[1:] < omega[:-1]).all())


def test_sinusoidal_encoding_rejects_odd_or_bad_sizes_with_a_clear_message():
    with pytest.raises(ValueError, match="must be even.*got 7"):
        sinusoidal_encoding(10, 7)
    with pytest.raises(ValueError, match="num_positions"):
        sinusoidal_encoding(-1, 8)
    with pytest.raises(ValueError, match="positive integer"):
        sinusoidal_encoding(4, 0)


@pytest.mark.parametrize("k", [1, 5, 37, -3])
def test_a_fixed_offset_is_a_linear_map_of_the_encoding(k):
    pe = sinusoidal_encoding(300, 32)
    m = relative_offset_matrix(k, 32)
    assert m.shape == (32, 32)
    positions = torch.arange(max(0, -k), 300 - max(0, k))
    shifted = pe[positions] @ m.T                       # rows: M_k @ PE(pos)
    torch.testing.assert_close(shifted, pe[positions + k], atol=1e-5, rtol=0)  # float32, |PE| <= 1


def test_offset_matrix_is_block_diagonal_orthogonal_and_composes():
    m3, m4, m7 = (relative_offset_matrix(k, 8, dtype=torch.float64) for k in (3, 4, 7))
    torch.testing.assert_close(m3 @ m3.T, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(m3 @ m4, m7, atol=1e-12, rtol=0)   # rotations add up
    off_block = m7.clone()
    for i in range(4):
        off_block[2 * i:2 * i + 2, 2 * i:2 * i + 2] = 0
    assert off_block.abs().max().item() == 0.0


def test_sinusoidal_module_adds_the_encoding_and_names_bad_shapes():
    module = SinusoidalPositionalEncoding(8, context_length=20)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(module(x), x + sinusoidal_encoding(5, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(module(x, start=3), x + sinusoidal_encoding(8, 8)[3:], atol=1e-6, rtol=0)
    assert len(list(module.parameters())) == 0 and "pe" not in module.state_dict()
    with pytest.raises(ValueError, match=r"\[\.\.\., seq, 8\], got \(2, 5, 6\)"):
        module(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="context_length=20"):
        module(torch.randn(1, 21, 8))


def test_learned_embedding_adds_one_trained_vector_per_position():
    module = LearnedPositionalEmbedding(context_length=10, d_model=4)
    assert sum(p.numel() for p in module.parameters()) == 40
    x = torch.zeros(3, 6, 4)
    out = module(x)
    torch.testing.assert_close(out[1], module.embedding.weight[:6], atol=0, rtol=0)
    torch.testing.assert_close(module(x, start=4)[0], module.embedding.weight[4:10], atol=0, rtol=0)
    out.sum().backward()
    assert module.embedding.weight.grad[:6].abs().sum() > 0 and module.embedding.weight.grad[6:].abs().sum() == 0
    with pytest.raises(ValueError, match="positions 0..10 do not fit context_length=10"):
        module(torch.zeros(1, 11, 4))


# ------------------------------------------------------------------------------------ RoPE


def rope_complex(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """An independent RoPE: pairs (x_2i, x_2i+1) as complex numbers, times exp(j * pos * omega_i)."""
    seq, d = x.shape[-2], x.shape[-1]
    omega = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * omega[None, :]
    rotor = torch.polar(torch.ones_like(angles), angles)                      # [seq, d/2] complex128
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * rotor).reshape(x.shape).to(x.dtype)


def test_rope_matches_the_complex_number_formulation():
    x = torch.randn(2, 3, 17, 16)
    torch.testing.assert_close(apply_rope(x), rope_complex(x), atol=1e-5, rtol=1e-5)  # float32


def test_rope_preserves_the_norm_of_every_vector():
    x = torch.randn(4, 50, 32)
    torch.testing.assert_close(apply_rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_leaves_position_zero_unchanged():
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(apply_rope(x)[:, 0], x[:, 0], atol=0, rtol=0)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_scores_depend_only_on_the_relative_offset(interleaved):
    d = 16
    q, k = torch.randn(d), torch.randn(d)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q[None, :], torch.tensor([m]), interleaved=interleaved)[0]
        kn = apply_rope(k[None, :], torch.tensor([n]), interleaved=interleaved)[0]
        return qm @ kn

    for shift in (1, 7, 100):
        for m, n in [(3, 1), (10, 10), (2, 9)]:
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-4, rtol=1e-5)  # float32
    by_offset = torch.stack([score(10, 10 - offset) for offset in range(8)])
    assert by_offset.std() > 0.05                      # different offsets give different scores


def test_rope_scores_over_a_sequence_are_shift_invariant():
    q, k = torch.randn(1, 12, 8), torch.randn(1, 12, 8)
    positions = torch.arange(12)
    s0 = apply_rope(q, positions) @ apply_rope(k, positions).transpose(-1, -2)
    s1 = apply_rope(q, positions + 50) @ apply_rope(k, positions + 50).transpose(-1, -2)
    torch.testing.assert_close(s1, s0, atol=1e-4, rtol=1e-5)  # float32, 50 positions of angle rounding


def test_rope_rotate_half_layout_is_the_interleaved_one_with_dimensions_permuted():
    x = torch.randn(2, 6, 8)
    to_halves = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pair i = (2i, 2i+1) -> (i, i + d/2)
    torch.testing.assert_close(apply_rope(x[..., to_halves], interleaved=False), apply_rope(x)[..., to_halves],
                               atol=1e-6, rtol=1e-6)


def test_rope_positions_broadcast_per_batch():
    x = torch.randn(2, 3, 5, 8)                                  # [batch, heads, seq, d_head]
    pos = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])[:, None, :]   # [batch, 1, seq]
    out = apply_rope(x, pos)
    torch.testing.assert_close(out[1], apply_rope(x[1], torch.arange(10, 15)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[0], apply_rope(x[0]), atol=1e-6, rtol=1e-6)


def test_rope_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match="must be even.*got 7"):
        apply_rope(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"positions of shape \(4,\) do not broadcast to .*\(2, 5\)"):
        apply_rope(torch.randn(2, 5, 8), torch.arange(4))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        apply_rope(torch.randn(8))
    with pytest.raises(ValueError, match=r"d_head=8.*\(2, 5, 4\)"):
        RotaryEmbedding(8)(torch.randn(2, 5, 4))


def test_rotary_module_equals_the_function_and_has_no_parameters():
    rope = RotaryEmbedding(16, base=500.0)
    x = torch.randn(2, 4, 9, 16)
    torch.testing.assert_close(rope(x), apply_rope(x, base=500.0), atol=0, rtol=0)
    assert sum(p.numel() for p in rope.parameters()) == 0


# ------------------------------------------------------------------------------------ the two RoPE layouts


def test_rope_split_halves_equals_hugging_face_llama_rotary_embedding():
    """The reference: transformers' Llama code (rotate_half, cos/sin of cat(freqs, freqs)), float32."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from hf_support import quietly

    config = quietly(LlamaConfig, hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=64)
    q, k = torch.randn(2, 4, 11, 16), torch.randn(2, 4, 11, 16)                 # [batch, heads, seq, d_head]
    positions = torch.arange(11)[None].expand(2, -1)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, interleaved=False), q_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(k, interleaved=False), k_hf, atol=1e-5, rtol=1e-5)
    assert (apply_rope(q) - q_hf).abs().max() > 0.1          # the interleaved layout is a different function


@pytest.mark.parametrize("d", [2, 8, 10, 64])
def test_halves_permutation_turns_one_layout_into_the_other_and_back(d):
    perm = rope_halves_permutation(d)
    assert sorted(perm.tolist()) == list(range(d))
    assert perm[: d // 2].tolist() == list(range(0, d, 2)) and perm[d // 2:].tolist() == list(range(1, d, 2))
    x = torch.randn(3, 7, d)
    inverse = torch.argsort(perm)
    torch.testing.assert_close(apply_rope(x, interleaved=False), apply_rope(x[..., inverse])[..., perm],
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(apply_rope(x), apply_rope(x[..., perm], interleaved=False)[..., inverse],
                               atol=1e-6, rtol=1e-6)


def test_scores_are_equal_when_queries_and_keys_are_permuted_alike():
    q, k, perm = torch.randn(9, 16), torch.randn(9, 16), rope_halves_permutation(16)
    interleaved = apply_rope(q) @ apply_rope(k).T
    halves = apply_rope(q[:, perm], interleaved=False) @ apply_rope(k[:, perm], interleaved=False).T
    torch.testing.assert_close(halves, interleaved, atol=1e-5, rtol=1e-5)


def llama_conversion_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """An independent formula: the row order of Hugging Face's Llama weight conversion, written here from
    its definition (view each head as [d_head/2, 2] pairs, swap to [2, d_head/2])."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def test_permute_rope_rows_matches_the_llama_conversion_formula_and_inverts():
    w = torch.randn(4 * 16, 48)
    torch.testing.assert_close(permute_rope_rows(w, 4), llama_conversion_permute(w, 4), atol=0, rtol=0)
    torch.testing.assert_close(permute_rope_rows(permute_rope_rows(w, 4), 4, to_halves=False), w, atol=0, rtol=0)
    bias = torch.randn(64)
    torch.testing.assert_close(permute_rope_rows(bias, 4), llama_conversion_permute(bias[:, None], 4)[:, 0])


def test_a_checkpoint_converted_by_permuting_rows_gives_the_same_attention_scores():
    heads, d_head, d_in = 3, 8, 20
    w_q, w_k = torch.randn(heads * d_head, d_in), torch.randn(heads * d_head, d_in)
    x = torch.randn(2, 6, d_in)                                                   # [batch, seq, d_in]

    def scores(wq, wk, interleaved):
        q = (x @ wq.T).view(2, 6, heads, d_head).transpose(1, 2)                  # [batch, heads, seq, d_head]
        k = (x @ wk.T).view(2, 6, heads, d_head).transpose(1, 2)
        return apply_rope(q, interleaved=interleaved) @ apply_rope(k, interleaved=interleaved).transpose(-1, -2)

    want = scores(w_q, w_k, interleaved=True)
    got = scores(permute_rope_rows(w_q, heads), permute_rope_rows(w_k, heads), interleaved=False)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    assert (scores(w_q, w_k, interleaved=False) - want).abs().max() > 0.1       # unconverted weights differ


def test_rope_layout_helpers_name_bad_input():
    with pytest.raises(ValueError, match="d must be even"):
        rope_halves_permutation(7)
    with pytest.raises(ValueError, match=r"num_heads=5 dividing .*\(64, 8\)"):
        permute_rope_rows(torch.randn(64, 8), 5)
    with pytest.raises(ValueError, match="num_heads must be a positive whole number"):
        permute_rope_rows(torch.randn(64, 8), 0)


# ------------------------------------------------------------------------------------ permutations


def test_attention_without_positions_is_permutation_equivariant_and_with_positions_is_not():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)

    def attend(h):
        return mha(h, h, h)

    pe = SinusoidalPositionalEncoding(16)
    assert permutation_gap(attend, x, perm).item() < 1e-5          # float32 rounding only
    assert permutation_gap(lambda h: attend(pe(h)), x, perm).item() > 1e-2


def test_sdpa_alone_is_permutation_equivariant():
    x = torch.randn(1, 6, 8)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    gap = permutation_gap(lambda h: scaled_dot_product_attention(h, h, h)[0], x, perm)
    assert gap.item() < 1e-6


def test_permutation_gap_names_bad_shapes():
    with pytest.raises(ValueError, match=r"x \(6, 8\) and perm \(6,\)"):
        permutation_gap(lambda h: h, torch.randn(6, 8), torch.arange(6))


# ------------------------------------------------------------------------------------ widget input


def test_encoding_entry_matches_the_table():
    pe = sinusoidal_encoding(101, 16)
    for pos, dim in [(0, 0), (0, 1), (3, 4), (100, 15), (17, 9)]:
        entry = encoding_entry(pos, dim, 16, max_position=100)
        assert entry.value == pytest.approx(pe[pos, dim].item(), abs=1e-6)
        assert entry.function == ("sin" if dim % 2 == 0 else "cos") and entry.pair == dim // 2
    assert encoding_entry("7", " 2 ", "16").position == 7


@pytest.mark.parametrize("position, dimension, d_model, words", [
    (-1, 0, 16, "position must be between 0 and 100, got -1"),
    (101, 0, 16, "position must be between 0 and 100, got 101"),
    (5, 16, 16, "dimension must be between 0 and 15"),
    (5, -2, 16, "dimension must be between 0 and 15"),
    (5, 0, 15, "d_model must be an even number"),
    ("", 0, 16, "position is empty"),
    ("abc", 0, 16, "position must be a whole number"),
    (2.5, 0, 16, "position must be a whole number"),
    (None, 0, 16, "position must be a whole number"),
])
def test_widget_input_out_of_range_gives_one_line(position, dimension, d_model, words):
    with pytest.raises(ValueError, match=words):
        encoding_entry(position, dimension, d_model, max_position=100)
    line = describe_encoding_entry(position, dimension, d_model, max_position=100)
    assert line.startswith("⚠") and words in line and "\n" not in line


def test_describe_encoding_entry_states_the_formula():
    line = describe_encoding_entry(3, 0, 8)
    assert line.startswith("PE[3, 0] = sin(3 × 1)") and f"{math.sin(3):+.4f}" in line
