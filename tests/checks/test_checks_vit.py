"""Lesson 14's checkers: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import einops
import pytest
import torch
import torch.nn.functional as F
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.vit import check_class_token, check_patch_rollout, check_patchify

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ------------------------------------------------------------------------------------ patchify, as learners write it

def patchify_loops(images, patch_size):
    b, c, h, w = images.shape
    p = patch_size
    out = []
    for i in range(0, h, p):
        for j in range(0, w, p):
            out.append(images[:, :, i:i + p, j:j + p].reshape(b, -1))
    return torch.stack(out, dim=1)


def patchify_einops(images, patch_size):
    return einops.rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)


def patchify_unfold(images, patch_size):
    return images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size) \
        .permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)


def patchify_channels_last(images, patch_size):  # the ViT paper's common einops pattern, (p1 p2 c)
    return einops.rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def patchify_column_loops(images, patch_size):
    b, c, h, w = images.shape
    p = patch_size
    return torch.stack([images[:, :, i:i + p, j:j + p].reshape(b, -1)
                        for j in range(0, w, p) for i in range(0, h, p)], dim=1)


def patchify_transposed_tiles(images, patch_size):
    b, c, h, w = images.shape
    p = patch_size
    return torch.stack([images[:, :, i:i + p, j:j + p].transpose(-1, -2).reshape(b, -1)
                        for i in range(0, h, p) for j in range(0, w, p)], dim=1)


def patchify_view(images, patch_size):
    b, c, h, w = images.shape
    return images.view(b, -1, c * patch_size * patch_size)


def patchify_square_only(images, patch_size):  # assumes h == w
    b, c, h, _ = images.shape
    g = h // patch_size
    x = images[..., :h].reshape(b, c, g, patch_size, g, patch_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, g * g, -1)


WRONG_PATCHIFY = [
    Wrong("channels last inside the patch", patchify_channels_last, "channel last"),
    Wrong("column by column", patchify_column_loops, "column by column"),
    Wrong("tiles transposed", patchify_transposed_tiles, "rows and columns are swapped"),
    Wrong("view without permute", patchify_view, "plain reshape"),
    Wrong("unfold, not transposed", lambda x, p: F.unfold(x, p, stride=p), "transpose its last two axes"),
    Wrong("stride 1", lambda x, p: F.unfold(x, p).transpose(1, 2), "overlap"),
    Wrong("returns None", lambda x, p: None, "None"),
    Wrong("square images only", patchify_square_only, "expected (2, 6, 12)"),   # holdout
    Wrong("a list of patches", lambda x, p: list(patchify_loops(x, p).unbind(1)), "torch.Tensor"),  # holdout
]
RIGHT_PATCHIFY = [
    Right("loops over the grid", patchify_loops),
    Right("einops", patchify_einops),
    Right("Tensor.unfold twice", patchify_unfold),
    Right("F.unfold transposed", lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2)),
]


# ------------------------------------------------------------------------------------ class token

def cls_learner(patches, cls_token, pos):
    b = patches.shape[0]
    tokens = torch.cat([cls_token.repeat(b, 1, 1), patches], dim=1)
    return tokens + pos


def cls_loop(patches, cls_token, pos):
    rows = []
    for x in patches:
        rows.append(torch.cat([cls_token[0], x]) + pos[0])
    return torch.stack(rows)


def cls_float64(patches, cls_token, pos):
    out = torch.cat([cls_token.double().expand(len(patches), -1, -1), patches.double()], 1) + pos.double()
    return out.float()


WRONG_CLS = [
    Wrong("class token last", lambda x, c, p: torch.cat([x, c.repeat(len(x), 1, 1)], 1) + p, "in FRONT"),
    Wrong("positions before the class token", lambda x, c, p: torch.cat([c.repeat(len(x), 1, 1), x + p[:, 1:]], 1),
          "has a position too"),
    Wrong("first n positions to the patches", lambda x, c, p: torch.cat([c.repeat(len(x), 1, 1), x + p[:, :-1]], 1),
          "shifted by one"),
    Wrong("forgot the positions", lambda x, c, p: torch.cat([c.repeat(len(x), 1, 1), x], 1), "positions are missing"),
    Wrong("adds the class token", lambda x, c, p: x + c + p[:, 1:], "ADDED"),
    Wrong("cat without expanding", lambda x, c, p: torch.cat([c, x], 1) + p, "expand it"),
    Wrong("cat along the features", lambda x, c, p: torch.cat([c.expand(len(x), -1, -1), x], -1) + p, "dim=1"),
    Wrong("class token with the position of patch 1",
          lambda x, c, p: torch.cat([c.repeat(len(x), 1, 1) + p[:, 1:2], x + p[:, 1:]], 1), None),   # holdout
    Wrong("only the first image", lambda x, c, p: (torch.cat([c, x[:1]], 1) + p).expand(len(x), -1, -1), None),  # holdout
]
RIGHT_CLS = [Right("repeat then cat", cls_learner), Right("a loop over the batch", cls_loop),
             Right("float64 inside", cls_float64)]


# ------------------------------------------------------------------------------------ rollout over patches

def rollout_learner(attentions, grid):
    n = attentions.shape[-1]
    result = torch.eye(n)
    for layer in attentions:
        a = (layer.mean(0) + torch.eye(n)) / 2
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    row = result[0, 1:]
    return (row / row.sum()).reshape(grid)


def rollout_learner_row(attentions):
    """The class token's whole row of the rollout, [n + 1] (its own column included)."""
    n = attentions.shape[-1]
    result = torch.eye(n)
    for layer in attentions:
        a = (layer.mean(0) + torch.eye(n)) / 2
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result[0]


def rollout_float64(attentions, grid):
    a = attentions.double().mean(1)
    eye = torch.eye(a.shape[-1], dtype=torch.float64)
    a = (a + eye) / (a + eye).sum(-1, keepdim=True)
    result = eye
    for layer in a:
        result = layer @ result
    row = result[0, 1:]
    return (row / row.sum()).reshape(grid[0], grid[1]).float()


def rollout_reversed_loop(attentions, grid):
    n = attentions.shape[-1]
    result = torch.eye(n)
    for layer in reversed(list(attentions)):   # earlier layers multiplied on the right
        a = (layer.mean(0) + torch.eye(n)) / 2
        result = result @ (a / a.sum(-1, keepdim=True))
    row = result[0, 1:]
    return (row / row.sum()).reshape(grid)


def rollout_variant(*, residual=True, renormalise=True, column=False, transpose=False, last_only=False,
                    later_right=False, keep_cls=False):
    def fn(attentions, grid):
        n = attentions.shape[-1]
        result = torch.eye(n)
        layers = attentions[-1:] if last_only else attentions
        for layer in layers:
            a = layer.mean(0)
            if residual and not last_only:
                a = (a + torch.eye(n)) / 2
                a = a / a.sum(-1, keepdim=True)
            result = result @ a if later_right else a @ result
        row = result[1:, 0] if column else (result[0] if keep_cls else result[0, 1:])
        if renormalise:
            row = row / row.sum()
        if keep_cls:
            return row
        return row.reshape(grid[1], grid[0]).T if transpose else row.reshape(grid)
    return fn


WRONG_ROLLOUTS = [
    Wrong("the column", rollout_variant(column=True), "COLUMN"),
    Wrong("no residual", rollout_variant(residual=False), "residual is missing"),
    Wrong("not renormalised", rollout_variant(renormalise=False), "renormalise the map"),
    Wrong("reshaped as (cols, rows)", rollout_variant(transpose=True), "transposed"),
    Wrong("last layer only", rollout_variant(last_only=True), "last layer's attention alone"),
    Wrong("later layer on the right", rollout_variant(later_right=True), "wrong order"),
    Wrong("kept the class token", rollout_variant(keep_cls=True), "shape"),
    Wrong("class token's column kept, last patch dropped",
          lambda a, g: rollout_learner_row(a)[:-1].div(rollout_learner_row(a)[:-1].sum()).reshape(g), "[0, :-1]"),
    Wrong("softmax to renormalise", lambda a, g: rollout_learner_row(a)[1:].softmax(-1).reshape(g), "softmax"),
    Wrong("max over heads", lambda a, g: rollout_learner(a.max(1, keepdim=True).values.expand_as(a), g), None),  # holdout
]
RIGHT_ROLLOUTS = [Right("a loop", rollout_learner), Right("float64 inside", rollout_float64),
                  Right("reversed loop, product on the right", rollout_reversed_loop)]


LIBRARY = {
    check_patchify: (WRONG_PATCHIFY, RIGHT_PATCHIFY),
    check_class_token: (WRONG_CLS, RIGHT_CLS),
    check_patch_rollout: (WRONG_ROLLOUTS, RIGHT_ROLLOUTS),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
