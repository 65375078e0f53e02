"""Checkers for lesson 14 (vision transformer): patchify, the class token with positions, rollout over patches.

The boundaries: for patchify several channels (the order inside a patch shows only then), non-square images
(rows and columns swapped shows only then), a batch of more than one and patches of one pixel; for the class
token a single patch and a batch of one (a token put at the wrong end, or positions shifted by one, show only
with distinct positions); for the rollout a single layer and head, a non-square grid (a transposed map
shows only then) and attention rows that favour the class token itself (renormalising matters only then).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.viz import attention_rollout
from course.vit import add_class_token_and_positions, patchify, rollout_map
from .core import CheckResult, Mistake, check_function


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ patchify

def _patches_permuted(order: tuple[int, ...]):
    def wrong(images, patch_size):
        b, c, h, w = images.shape
        p = patch_size
        x = images.reshape(b, c, h // p, p, w // p, p).permute(*order)
        return x.reshape(b, (h // p) * (w // p), c * p * p)
    return wrong


def _patches_plain_reshape(images, patch_size):
    b, c, h, w = images.shape
    return images.reshape(b, (h // patch_size) * (w // patch_size), c * patch_size * patch_size)


def _patches_untransposed(images, patch_size):
    return F.unfold(images, kernel_size=patch_size, stride=patch_size)


def _patches_overlapping(images, patch_size):
    return F.unfold(images, kernel_size=patch_size, stride=1).transpose(1, 2)


PATCHIFY_MISTAKES = [
    Mistake("inside a patch the values run channel last ((row, column, channel)); the course's order is channel "
            "first, then rows, then columns, as a convolution's weight [d, c, p, p] flattens",
            _patches_permuted((0, 2, 4, 3, 5, 1))),
    Mistake("the patches are numbered column by column: number them row by row (left to right, then down), "
            "so the grid's rows come before its columns in the permute", _patches_permuted((0, 4, 2, 1, 3, 5))),
    Mistake("inside a patch the rows and columns are swapped: permute to (b, rows, cols, c, p_row, p_col)",
            _patches_permuted((0, 2, 4, 1, 5, 3))),
    Mistake("a plain reshape does not cut patches: it slices the image's memory into runs of c*p*p values; "
            "reshape to [b, c, h/p, p, w/p, p] and permute the grid axes in front first", _patches_plain_reshape),
    Mistake("F.unfold gives [b, c*p*p, n]: transpose its last two axes to get one row per patch",
            _patches_untransposed),
    Mistake("the patches overlap: with stride 1 a window starts at every pixel; move a whole patch at a time "
            "(stride = patch_size)", _patches_overlapping),
]


def _patchify_cases() -> list[tuple]:
    return [(_rand(2, 3, 4, 6, seed=0), 2),     # channels, non-square, batch of 2: separates every mistake
            (_rand(1, 1, 8, 8, seed=1), 4),
            (_rand(2, 2, 6, 9, seed=2), 3),
            (_rand(3, 1, 28, 28, seed=3), 7),
            (_rand(1, 3, 3, 2, seed=4), 1)]     # one-pixel patches


def check_patchify(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(images [b, c, h, w], patch_size) -> [b, n, c * p * p]``, patches row by row, channel first inside."""
    return check_function("patchify", fn, patchify, _patchify_cases(), mistakes=PATCHIFY_MISTAKES, atol=1e-6,
                          strict=strict)


# ------------------------------------------------------------------------------------ class token and positions

def _cls_at_end(patches, cls_token, pos):
    b, _, d = patches.shape
    return torch.cat([patches, cls_token.expand(b, 1, d)], dim=1) + pos


def _positions_for_patches_only(patches, cls_token, pos):
    b, _, d = patches.shape
    return torch.cat([cls_token.expand(b, 1, d), patches + pos[:, 1:]], dim=1)


def _positions_shifted(patches, cls_token, pos):
    b, n, d = patches.shape
    return torch.cat([cls_token.expand(b, 1, d), patches + pos[:, :n]], dim=1)


def _no_positions(patches, cls_token, pos):
    b, _, d = patches.shape
    return torch.cat([cls_token.expand(b, 1, d), patches], dim=1)


def _cls_added(patches, cls_token, pos):
    return patches + cls_token + pos[:, 1:]


def _cls_replaces_first(patches, cls_token, pos):
    out = patches.clone()
    out[:, 0] = cls_token[:, 0]
    return torch.cat([out, patches[:, -1:]], dim=1) + pos


CLS_MISTAKES = [
    Mistake("the class token goes in FRONT of the patches (position 0), not after them", _cls_at_end),
    Mistake("the class token has a position too: add pos_embedding after the concatenation, to all n + 1 tokens",
            _positions_for_patches_only),
    Mistake("positions shifted by one: pos_embedding[:, 0] is the class token's, the patches take [:, 1:]; "
            "concatenate first, then add", _positions_shifted),
    Mistake("the positions are missing: add pos_embedding to the tokens", _no_positions),
    Mistake("the class token is ADDED to the patches; it is a token of its own: concatenate it in front (n + 1 tokens)",
            _cls_added),
    Mistake("the class token overwrote the first patch: concatenate it in front instead", _cls_replaces_first),
]


def _cls_cases() -> list[tuple]:
    def case(b, n, d, seed):
        return (_rand(b, n, d, seed=seed), _rand(1, 1, d, seed=seed + 1) + 1.0, _rand(1, n + 1, d, seed=seed + 2) * 3)
    return [case(2, 4, 3, 0), case(1, 1, 2, 10), case(3, 16, 8, 20)]


def check_class_token(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(patch_embeddings [b, n, d], cls_token [1, 1, d], pos_embedding [1, n+1, d]) -> [b, n+1, d]``."""
    return check_function("class token and positions", fn, add_class_token_and_positions, _cls_cases(),
                          mistakes=CLS_MISTAKES, atol=1e-6, strict=strict,
                          exception_hints=[("Sizes of tensors must match except in dimension 1",
                                            "the class token is [1, 1, d]: expand it to [b, 1, d] "
                                            "(cls_token.expand(b, -1, -1)) before concatenating it with the patches"),
                                           ("Sizes of tensors must match", "concatenate along the token axis "
                                            "(dim=1): the class token becomes token 0 of each image")])


# ------------------------------------------------------------------------------------ rollout over patches

def _rollout_row(attentions, add_residual=True):
    return attention_rollout(attentions, add_residual=add_residual)


def _grid_map(row, grid, renormalise=True):
    rows, cols = grid
    row = row / row.sum() if renormalise else row
    return row.reshape(rows, cols)


def _patch_rollout_column(attentions, grid):
    return _grid_map(_rollout_row(attentions)[1:, 0], grid)


def _patch_rollout_no_residual(attentions, grid):
    return _grid_map(_rollout_row(attentions, add_residual=False)[0, 1:], grid)


def _patch_rollout_not_renormalised(attentions, grid):
    return _grid_map(_rollout_row(attentions)[0, 1:], grid, renormalise=False)


def _patch_rollout_transposed(attentions, grid):
    rows, cols = grid
    return _grid_map(_rollout_row(attentions)[0, 1:], (cols, rows)).T


def _patch_rollout_last_layer(attentions, grid):
    return _grid_map(attentions[-1].mean(0)[0, 1:], grid)


def _patch_rollout_wrong_order(attentions, grid):
    per = 0.5 * attentions.mean(1) + 0.5 * torch.eye(attentions.shape[-1])
    per = per / per.sum(-1, keepdim=True)
    result = torch.eye(attentions.shape[-1])
    for layer in per:
        result = result @ layer
    return _grid_map(result[0, 1:], grid)


def _patch_rollout_last_patch_dropped(attentions, grid):
    return _grid_map(_rollout_row(attentions)[0, :-1], grid)


def _patch_rollout_softmax(attentions, grid):
    return _rollout_row(attentions)[0, 1:].softmax(-1).reshape(grid)


def _patch_rollout_first_patch_dropped(attentions, grid):
    row = _rollout_row(attentions)[0]
    return _grid_map(torch.cat([row[2:], row[:1]]), grid)


PATCH_ROLLOUT_MISTAKES = [
    Mistake("you read the class token's COLUMN (who draws on it); its ROW, rollout[0, 1:], says what it draws on",
            _patch_rollout_column),
    Mistake("the residual is missing: each layer is (A + I) / 2, rows renormalised, before multiplying",
            _patch_rollout_no_residual),
    Mistake("renormalise the map: without the class token's own column the row no longer sums to 1; divide by its sum",
            _patch_rollout_not_renormalised),
    Mistake("the map is transposed: reshape the n patches to (rows, cols), row by row, as patchify numbers them",
            _patch_rollout_transposed),
    Mistake("that is the last layer's attention alone: roll out through every layer", _patch_rollout_last_layer),
    Mistake("the layers are multiplied in the wrong order: the later layer goes on the left", _patch_rollout_wrong_order),
    Mistake("off by one: column 0 is the class token; the patches are columns 1..n", _patch_rollout_first_patch_dropped),
    Mistake("off by one: [0, :-1] keeps the class token's own column and drops the last patch; the patches are "
            "columns 1..n, rollout[0, 1:]", _patch_rollout_last_patch_dropped),
    Mistake("renormalise by dividing by the sum, not with softmax: softmax exponentiates the weights and "
            "flattens the map", _patch_rollout_softmax),
]


def _attn(layers: int, heads: int, s: int, seed: int, self_weight: float = 0.0) -> torch.Tensor:
    a = torch.randn(layers, heads, s, s, generator=torch.Generator().manual_seed(seed)) * 1.5
    a[..., :, 0] += self_weight  # every token leans on the class token
    return a.softmax(-1)


def _patch_rollout_cases() -> list[tuple]:
    return [(_attn(2, 3, 7, seed=0, self_weight=2.0), (2, 3)),   # non-square: a transposed map shows
            (_attn(3, 2, 5, seed=1), (2, 2)),
            (_attn(1, 1, 7, seed=2, self_weight=1.0), (3, 2)),
            (_attn(2, 4, 17, seed=3, self_weight=0.5), (4, 4))]


def check_patch_rollout(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(attentions [layers, heads, n+1, n+1], grid (rows, cols)) -> [rows, cols]``: the class token's row of
    the rollout, without its own column, renormalised to sum to 1, laid out on the patch grid."""
    return check_function("rollout over patches", fn, rollout_map, _patch_rollout_cases(),
                          mistakes=PATCH_ROLLOUT_MISTAKES, atol=1e-5, strict=strict)
