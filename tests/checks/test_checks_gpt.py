"""Lesson 08's checkers of the GPT itself: the forward pass assembled from its parts, and AdamW's decay groups.
The correct versions pass, every known mistake gets its own hint, learner-style answers (written here, apart
from the checker's mistake library) are rejected with the words that name them, and right answers written
other ways pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.attention import causal_mask
from course.checks.core import NOT_ATTEMPTED
from course.checks.gpt import (
    DECAY_GROUPS_MISTAKES,
    GPT_FORWARD_MISTAKES,
    GPTParts,
    _decay_cases,
    _forward_cases,
    check_decay_groups,
    check_gpt_forward,
)
from course.models import GPT, GPTConfig
from course.train import decay_groups
from answer_library import Right, Wrong, library_tests, mistake_tests

CHECKERS = {
    "forward": (check_gpt_forward, GPT_FORWARD_MISTAKES),
    "decay": (check_decay_groups, DECAY_GROUPS_MISTAKES),
}


# ----------------------------------------------------------------------------- the forward pass, as learners write it

def learner_forward(model, idx):
    B, T = idx.shape
    tok = model.token_embedding(idx)                                   # [B, T, d]
    pos = model.position_embedding(torch.arange(T, device=idx.device))  # [T, d]
    x = tok + pos
    mask = causal_mask(T, device=idx.device)
    for block in model.blocks:
        x = block(x, mask=mask)
    x = model.final_norm(x)
    return model.lm_head(x)


def forward_variant(*, pos=lambda model, idx: model.position_embedding(torch.arange(idx.shape[1])),
                    mask=lambda T: causal_mask(T), after_blocks=lambda model, x: model.final_norm(x),
                    head=lambda model, x: model.lm_head(x), each_block=None, tok_scale=1.0, blocks=None):
    """A learner's forward pass with one piece changed."""
    def forward(model, idx):
        T = idx.shape[1]
        x = model.token_embedding(idx) * tok_scale
        p = pos(model, idx)
        if p is not None:
            x = x + p
        for block in (blocks(model) if blocks else model.blocks):
            x = block(x, mask=mask(T))
            if each_block is not None:
                x = each_block(model, x)
        return head(model, after_blocks(model, x))
    return forward


def forward_returns_inside_loop(model, idx):
    T = idx.shape[1]
    x = model.token_embedding(idx) + model.position_embedding.weight[:T]
    for block in model.blocks:
        x = block(x, mask=causal_mask(T))
        return model.lm_head(model.final_norm(x))   # indented one level too far


def forward_with_einsum_head(model, idx):
    T = idx.shape[1]
    x = model.token_embedding.weight[idx] + model.position_embedding.weight[:T]
    keep = torch.tril(torch.ones(T, T)).bool()
    for block in model.blocks:
        x = block(x, keep)
    x = model.final_norm(x)
    return torch.einsum("btd,vd->btv", x, model.lm_head.weight)


def forward_float64_norm(model, idx):
    T = idx.shape[1]
    x = model.token_embedding(idx) + model.position_embedding(torch.arange(T))[None]
    for block in model.blocks:
        x = block(x, mask=causal_mask(T)[None, None])
    norm = model.final_norm
    x64 = x.double()
    mean, var = x64.mean(-1, keepdim=True), x64.var(-1, keepdim=True, unbiased=False)
    h = ((x64 - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()).float()
    return model.lm_head(h)


def forward_one_sequence_at_a_time(model, idx):
    return torch.stack([learner_forward(model, row[None])[0] for row in idx])


def forward_full_table(model, idx):
    x = model.token_embedding(idx) + model.position_embedding.weight     # every position of the table
    T = idx.shape[1]
    for block in model.blocks:
        x = block(x, mask=causal_mask(T))
    return model.lm_head(model.final_norm(x))


def forward_mask_of_context(model, idx):
    T = idx.shape[1]
    x = model.token_embedding(idx) + model.position_embedding(torch.arange(T))
    mask = causal_mask(model.position_embedding.num_embeddings)
    for block in model.blocks:
        x = block(x, mask=mask)
    return model.lm_head(model.final_norm(x))


def forward_in_place(model, idx):
    logits = learner_forward(model, idx)
    idx.fill_(0)   # "clean up" the input, in place
    return logits


def forward_no_return(model, idx):
    learner_forward(model, idx)


WRONG_FORWARDS = [
    Wrong("no positions", forward_variant(pos=lambda model, idx: None), "no position embedding"),
    Wrong("positions of the ids", forward_variant(pos=lambda model, idx: model.position_embedding(idx)),
          "looked up with the token ids"),
    Wrong("positions from 1", forward_variant(pos=lambda model, idx: model.position_embedding(
        torch.arange(1, idx.shape[1] + 1))), "shifted by one"),
    Wrong("no mask", forward_variant(mask=lambda T: None), "no causal mask"),
    Wrong("triu mask", forward_variant(mask=lambda T: torch.ones(T, T, dtype=torch.bool).triu(1)), "inverted"),
    Wrong("no final norm", forward_variant(after_blocks=lambda model, x: x), "no final norm"),
    Wrong("norm after each block", forward_variant(each_block=lambda model, x: model.final_norm(x),
                                                   after_blocks=lambda model, x: x), "after every block"),
    Wrong("return inside the loop", forward_returns_inside_loop, "only the first block ran"),
    Wrong("blocks reversed", forward_variant(blocks=lambda model: list(model.blocks)[::-1]), "reverse order"),
    Wrong("tied by hand", forward_variant(head=lambda model, x: x @ model.token_embedding.weight.T),
          "token embedding's matrix"),
    Wrong("scaled by sqrt(d)", lambda model, idx: forward_variant(
        tok_scale=math.sqrt(model.token_embedding.embedding_dim))(model, idx), "scaled by sqrt(d_model)"),
    Wrong("softmax at the end", forward_variant(head=lambda model, x: F.softmax(model.lm_head(x), dim=-1)),
          "returned probabilities"),
    Wrong("log_softmax at the end", forward_variant(head=lambda model, x: F.log_softmax(model.lm_head(x), -1)),
          "log-probabilities"),
    Wrong("last position only", lambda model, idx: learner_forward(model, idx)[:, -1, :],
          "only the last position"),
    Wrong("the whole position table", forward_full_table, "not for the context length"),
    Wrong("a mask of the context length", forward_mask_of_context, "not for the context length"),
    Wrong("changes idx in place", forward_in_place, "in place"),
    Wrong("no return", forward_no_return, "returned None"),
    # holdouts, written after the checker was finished
    Wrong("final norm twice", forward_variant(after_blocks=lambda model, x: model.final_norm(model.final_norm(x))),
          None),
    Wrong("a ReLU before the head", forward_variant(after_blocks=lambda model, x: torch.relu(model.final_norm(x))),
          None),
    Wrong("the mask's diagonal blocked too", forward_variant(
        mask=lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1) | (torch.arange(T)[:, None] == 0)), None),
]

RIGHT_FORWARDS = [
    Right("as the lesson writes it", learner_forward),
    Right("the package's GPT", lambda model, idx: model.reference_logits(idx)),
    Right("indexing the tables, a tril mask, einsum head", forward_with_einsum_head),
    Right("final norm by hand in float64", forward_float64_norm),
    Right("one sequence at a time", forward_one_sequence_at_a_time),
]


# ----------------------------------------------------------------------------- the decay groups, as learners write them

def learner_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def groups_by_module_type(model, weight_decay):
    """Weights of Linear and Embedding decay; everything else not; a shared tensor counted once."""
    seen, decay, no_decay = set(), [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            big = isinstance(module, (nn.Linear, nn.Embedding)) and name == "weight"
            (decay if big else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def groups_from_the_state_dict(model, weight_decay):
    """From state_dict(keep_vars=True), which lists a tied tensor under both names: each tensor kept once."""
    unique = {id(p): p for p in model.state_dict(keep_vars=True).values() if isinstance(p, nn.Parameter)}
    return ({"params": [p for p in unique.values() if p.ndim > 1], "weight_decay": weight_decay},
            {"params": (p for p in unique.values() if p.ndim <= 1), "weight_decay": 0.0})


def groups_three(model, weight_decay):
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim == 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim > 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0}]


def groups_of_names(model, weight_decay):
    return [{"params": [n for n, p in model.named_parameters() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [n for n, p in model.named_parameters() if p.dim() < 2], "weight_decay": 0.0}]


def groups_of_copies(model, weight_decay):
    return [{"params": [p.detach() for p in model.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p.detach() for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def groups_as_sets(model, weight_decay):
    return [{"params": {p for p in model.parameters() if p.dim() >= 2}, "weight_decay": weight_decay},
            {"params": {p for p in model.parameters() if p.dim() < 2}, "weight_decay": 0.0}]


def groups_tied_twice(model, weight_decay):
    decay, no_decay = [], []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            decay.append(module.weight)
            if getattr(module, "bias", None) is not None:
                no_decay.append(module.bias)
        else:
            no_decay.extend(module.parameters(recurse=False))
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def groups_only_linear(model, weight_decay):
    """Linear layers only: the embeddings and norms forgotten altogether."""
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    no_decay = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def groups_norms_decayed(model, weight_decay):
    return [{"params": [p for n, p in model.named_parameters() if "bias" not in n], "weight_decay": weight_decay},
            {"params": [p for n, p in model.named_parameters() if "bias" in n], "weight_decay": 0.0}]


WRONG_GROUPS = [
    Wrong("one group, all decayed", lambda model, wd: [{"params": model.parameters(), "weight_decay": wd}],
          "every parameter is decayed"),
    Wrong("AdamW's default everywhere", lambda model, wd: [{"params": list(model.parameters())}],
          "AdamW's default, 0.01"),
    Wrong("no decay at all", lambda model, wd: [{"params": list(model.parameters()), "weight_decay": 0.0}],
          "nothing is decayed"),
    Wrong("groups swapped", lambda model, wd: [{"params": [p for p in model.parameters() if p.dim() < 2],
                                                "weight_decay": wd},
                                               {"params": [p for p in model.parameters() if p.dim() >= 2],
                                                "weight_decay": 0.0}], "swapped"),
    Wrong("norm gains decayed", groups_norms_decayed, "norms' gains are decayed"),
    Wrong("biases decayed", lambda model, wd: [{"params": [p for n, p in model.named_parameters()
                                                           if "norm" not in n], "weight_decay": wd},
                                               {"params": [p for n, p in model.named_parameters() if "norm" in n],
                                                "weight_decay": 0.0}], "biases are decayed"),
    Wrong("embeddings not decayed", lambda model, wd: [
        {"params": [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n
                    and not n.startswith("0.")], "weight_decay": wd},
        {"params": [p for n, p in model.named_parameters() if p.dim() < 2 or "embedding" in n or n.startswith("0.")],
         "weight_decay": 0.0}], "embedding tables are not decayed"),
    Wrong("tied weight twice", groups_tied_twice, "tied"),
    Wrong("Linear layers only", groups_only_linear, "in no group"),
    Wrong("second group without weight_decay", lambda model, wd: [
        learner_groups(model, wd)[0], {"params": [p for p in model.parameters() if p.dim() == 1]}],
        "no 'weight_decay'"),
    Wrong("0.1 hard-coded", lambda model, wd: learner_groups(model, 0.1), "fixed number"),
    Wrong("names instead of tensors", groups_of_names, "holds the name"),
    Wrong("detached copies", groups_of_copies, "not one of the model's parameters"),
    Wrong("sets", groups_as_sets, "use a list"),
    Wrong("a dict of two lists", lambda model, wd: {"decay": [p for p in model.parameters() if p.dim() >= 2],
                                                    "no_decay": [p for p in model.parameters() if p.dim() < 2]},
          "not one dict"),
    Wrong("the lists without dicts", lambda model, wd: [[p for p in model.parameters() if p.dim() >= 2],
                                                        [p for p in model.parameters() if p.dim() < 2]],
          "not a dict with a 'params' list"),
    Wrong("None", lambda model, wd: None, "return a list of parameter groups"),
    # holdouts, written after the checker was finished
    Wrong("decay halved in the second group", lambda model, wd: [learner_groups(model, wd)[0],
                                                                  {"params": learner_groups(model, wd)[1]["params"],
                                                                   "weight_decay": wd / 2}], None),
    Wrong("the last parameter dropped", lambda model, wd: [
        {"params": [p for p in list(model.parameters())[:-1] if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in list(model.parameters())[:-1] if p.dim() < 2], "weight_decay": 0.0}], "in no group"),
]

RIGHT_GROUPS = [
    Right("the course's", decay_groups),
    Right("a loop over named_parameters", learner_groups),
    Right("by module type, a shared tensor once", groups_by_module_type),
    Right("from the state dict, a tuple of groups with a generator", groups_from_the_state_dict),
    Right("three groups, integer 0", groups_three),
    Right("one group per parameter", lambda model, wd: [{"params": [p], "weight_decay": wd if p.dim() > 1 else 0.0}
                                                        for p in model.parameters()]),
]


LIBRARY = {
    check_gpt_forward: (WRONG_FORWARDS, RIGHT_FORWARDS),
    check_decay_groups: (WRONG_GROUPS, RIGHT_GROUPS),
}

test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


test_each_known_mistake_fails_with_its_own_hint, test_hints_within_a_checker_are_all_different = mistake_tests(CHECKERS)


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS.values()])
def test_unattempted_exercise_says_not_attempted(checker):
    def stub(*args):
        raise NotImplementedError()

    assert checker(stub, strict=False).status == NOT_ATTEMPTED


def test_the_forward_cases_hold_the_parts_of_a_real_gpt_and_its_logits():
    """The reference is the package's GPT: its logits equal a forward pass through the same tensors."""
    for parts, idx in _forward_cases():
        assert isinstance(parts, GPTParts)
        with torch.no_grad():
            torch.testing.assert_close(parts.reference_logits(idx), learner_forward(parts, idx), atol=1e-5, rtol=1e-5)


def test_the_forward_cases_make_every_part_matter():
    """Each part of the model moves the logits far beyond the checker's tolerance (1e-4) on the first case."""
    parts, idx = _forward_cases()[0]
    with torch.no_grad():
        right = learner_forward(parts, idx)
        for mistake in GPT_FORWARD_MISTAKES[:-3]:     # the last three change the output's form, not a part
            wrong = mistake.fn(parts, idx)
            assert (wrong - right).abs().max() > 0.1, mistake.hint


def test_the_forward_checker_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    check_gpt_forward(learner_forward, strict=False)
    check_decay_groups(learner_groups, strict=False)
    assert torch.equal(before, torch.random.get_rng_state())


def test_the_decay_cases_hold_a_tied_tensor_biases_and_norms_of_both_kinds():
    tied, _ = _decay_cases()[0]
    assert tied.lm_head.weight is tied.token_embedding.weight
    names = [n for m, _ in _decay_cases() for n, _ in m.named_parameters()]
    assert any(n.endswith("bias") for n in names)
    assert any("norm" in n and n.endswith("weight") for n in names)
    assert {type(m).__name__ for m, _ in _decay_cases() for m in m.modules()} >= {"RMSNorm", "LayerNorm", "Embedding"}


def test_a_wrong_group_is_located_by_the_parameter_name():
    def norms_forgotten_in_one_block(model, wd):
        groups = learner_groups(model, wd)
        groups[1]["params"] = [p for p in groups[1]["params"] if p is not model.blocks[0].norm1.weight] \
            if hasattr(model, "blocks") else groups[1]["params"]
        return groups
    result = check_decay_groups(norms_forgotten_in_one_block, strict=False)
    assert not result.passed and "'blocks.0.norm1.weight'" in result.line and "in no group" in result.line


def test_the_course_groups_train_with_adamw():
    """The groups the checker accepts are what AdamW takes: it builds, and steps a tied GPT."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=6, d_model=8, num_heads=2, num_layers=1))
    optimizer = torch.optim.AdamW(learner_groups(model, 0.1), lr=1e-3)
    model(torch.randint(0, 11, (2, 6))).sum().backward()
    optimizer.step()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
