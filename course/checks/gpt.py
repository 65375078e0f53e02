"""Checkers for lesson 08 (decoder-only GPT): the GPT's forward pass assembled from its parts, and the
parameter groups of AdamW (which parameters get weight decay). The lesson's sampling exercises (causal
attention, temperature, top-k, top-p) are checked in :mod:`course.checks.generate`; they are imported here
too, so that this module holds every checker of the lesson.

**The forward pass.** The learner's ``gpt_forward(model, idx)`` gets a module laid out like the lesson's
``MyGPT`` (``token_embedding``, ``position_embedding`` an ``nn.Embedding`` of one vector per position,
``blocks``, ``final_norm``, ``lm_head``), holding the weights of a ``course.models.GPT``, and must return
that GPT's logits. The weights are redrawn at a scale where every part matters (unit-variance embeddings,
``1 / sqrt(fan_in)`` matrices, gains away from 1), so that leaving any part out, or adding one, changes the
logits far beyond the tolerance. The cases: a window shorter than the context with a vocabulary smaller
than it (positions taken from the token ids, or shifted by one, still run and are silently wrong), an
untied head (using the token embedding as the head is wrong there), a window as long as the context, a
single token, batches of 1 to 3.

**The decay groups.** The learner's ``decay_groups(model, weight_decay)`` returns AdamW's parameter groups.
The checker reads them as two facts per parameter, in ``model.named_parameters()`` order: how many groups
hold it (exactly one each) and the weight decay AdamW would apply to it (a group without
``"weight_decay"`` gets AdamW's default, 0.01). The course's convention: tensors of two or more
dimensions (weight matrices, embedding tables) decay, one-dimensional ones (biases, norm gains and
shifts) do not. The cases: a GPT with a tied head (a walk over modules collects the shared tensor twice),
a model with RMSNorm and bias-free layers, and weight decays other than 0.1 (a hard-coded value fails).
``tests/checks/test_checks_gpt.py`` runs each mistake and a library of learner-style answers through them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..attention import causal_mask
from ..layers import LayerNorm, TransformerBlock
from ..models import GPT, GPTConfig
from ..train import decay_groups
from .core import CheckResult, Mistake, check_function
from .generate import check_causal_self_attention, check_temperature, check_top_k_filter, check_top_p_filter

__all__ = [
    "GPTParts",
    "check_gpt_forward",
    "check_decay_groups",
    # lesson 08's sampling exercises, from course.checks.generate
    "check_causal_self_attention",
    "check_temperature",
    "check_top_k_filter",
    "check_top_p_filter",
]


# ----------------------------------------------------------------------------- the forward pass

class GPTParts(nn.Module):
    """The parts of a ``course.models.GPT`` under the lesson's ``MyGPT`` names (the same tensors, shared):
    ``token_embedding`` ``nn.Embedding(vocab, d_model)``, ``position_embedding`` ``nn.Embedding(context,
    d_model)``, ``blocks`` (pre-norm ``TransformerBlock``s), ``final_norm``, ``lm_head``."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.context_length = gpt.config.context_length
        self.token_embedding = gpt.token_embedding
        self.position_embedding = gpt.position_embedding.embedding
        self.blocks = gpt.blocks
        self.final_norm = gpt.final_norm
        self.lm_head = gpt.lm_head
        self._gpt = (gpt,)   # the whole model, kept out of the module tree: the checker's reference

    def reference_logits(self, idx: Tensor) -> Tensor:
        """``course.models.GPT``'s logits for ``idx [batch, T]``: ``[batch, T, vocab]``."""
        return self._gpt[0](idx)


def _redraw(gpt: GPT, g: torch.Generator) -> GPT:
    """New weights at a scale where every part of the model changes the logits clearly."""
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("embedding.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return gpt.eval()


def _parts(vocab: int, context: int, d_model: int, heads: int, layers: int, tied: bool, seed: int) -> GPTParts:
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    try:  # the GPT's own initialisation draws from the global generator: leave the learner's untouched
        gpt = GPT(GPTConfig(vocab_size=vocab, context_length=context, d_model=d_model, num_heads=heads,
                            num_layers=layers, tie_weights=tied))
    finally:
        torch.random.set_rng_state(torch_state)
    return GPTParts(_redraw(gpt, g))


def _forward_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(80)
    return [
        # a window shorter than the context, ids below the context length, an untied head
        (_parts(13, 16, 16, 2, 2, tied=False, seed=1), torch.randint(0, 13, (2, 9), generator=g)),
        # a window exactly as long as the context, a tied head, three blocks
        (_parts(20, 8, 24, 4, 3, tied=True, seed=2), torch.randint(0, 20, (1, 8), generator=g)),
        # one token, batch 3
        (_parts(20, 8, 24, 4, 3, tied=True, seed=3), torch.randint(0, 20, (3, 1), generator=g)),
    ]


@torch.no_grad()
def _reference_forward(parts: GPTParts, idx: Tensor) -> Tensor:
    """The package's GPT itself, on the same tensors."""
    return parts.reference_logits(idx)


def _forward_variant(*, positions="arange", mask="causal", final_norm="end", head="lm_head", scale=False,
                     blocks="all", out=None):
    """The forward pass with one piece changed (for the mistakes below)."""
    def forward(parts: GPTParts, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        x = parts.token_embedding(idx)
        if scale:
            x = x * math.sqrt(x.shape[-1])
        if positions == "arange":
            x = x + parts.position_embedding(torch.arange(T))
        elif positions == "from ids":
            x = x + parts.position_embedding(idx)
        elif positions == "shifted":
            x = x + parts.position_embedding(torch.arange(1, T + 1))
        m = {"causal": causal_mask(T), "none": None, "inverted": ~causal_mask(T)}[mask]
        if final_norm == "start":
            x = parts.final_norm(x)
        chosen = {"all": list(parts.blocks), "first": list(parts.blocks)[:1],
                  "reversed": list(parts.blocks)[::-1]}[blocks]
        for block in chosen:
            x = block(x, mask=m)
            if final_norm == "each":
                x = parts.final_norm(x)
        if final_norm == "end":
            x = parts.final_norm(x)
        logits = x @ parts.token_embedding.weight.T if head == "embedding" else parts.lm_head(x)
        if out == "softmax":
            return logits.softmax(-1)
        if out == "log_softmax":
            return logits.log_softmax(-1)
        if out == "last":
            return logits[:, -1]
        return logits
    return forward


GPT_FORWARD_MISTAKES = [
    Mistake("no position embedding: add model.position_embedding(torch.arange(T)) to the token embeddings, "
            "or the model cannot tell the order of the tokens",
            _forward_variant(positions="none")),
    Mistake("the positions were looked up with the token ids: position t's vector is "
            "model.position_embedding(torch.arange(T))[t], whatever the token there",
            _forward_variant(positions="from ids")),
    Mistake("the positions are shifted by one: the first token is at position 0, torch.arange(T)",
            _forward_variant(positions="shifted")),
    Mistake("no causal mask: pass mask=causal_mask(T) to every block, or each position sees the tokens it "
            "must predict",
            _forward_variant(mask="none")),
    Mistake("the mask is inverted: causal_mask(T) is True where a query may attend (itself and the past); "
            "pass it as it is",
            _forward_variant(mask="inverted")),
    Mistake("no final norm: apply model.final_norm after the last block, before model.lm_head (the blocks "
            "are pre-norm, so their output is not normalised)",
            _forward_variant(final_norm="none")),
    Mistake("the final norm is applied after every block: apply it once, after the last block",
            _forward_variant(final_norm="each")),
    Mistake("the final norm is applied before the blocks: apply it after the last block, before the head",
            _forward_variant(final_norm="start")),
    Mistake("only the first block ran: is `return` inside the loop over model.blocks? Run every block, "
            "then the final norm and the head",
            _forward_variant(blocks="first")),
    Mistake("the blocks ran in reverse order: run model.blocks in order",
            _forward_variant(blocks="reversed")),
    Mistake("the head is the token embedding's matrix: use model.lm_head, which equals it only when the "
            "weights are tied (this model's are not)",
            _forward_variant(head="embedding")),
    Mistake("the token embeddings are scaled by sqrt(d_model): that is the 2017 Transformer's choice; "
            "GPT adds token and position embeddings as they are",
            _forward_variant(scale=True)),
    Mistake("returned probabilities: return the logits (model.lm_head's output); the softmax comes in the "
            "loss or when sampling",
            _forward_variant(out="softmax")),
    Mistake("returned log-probabilities: return the logits themselves (F.cross_entropy applies log_softmax)",
            _forward_variant(out="log_softmax")),
    Mistake("returned only the last position's logits: training needs every position's, [batch, T, vocab]",
            _forward_variant(out="last")),
]


def _forward_locate(args, name, got, want) -> str | None:
    """Where the logits go wrong: from the first position, or only later (the past leaks or the positions)."""
    wrong = ((got - want).abs() > 1e-4 + 1e-4 * want.abs()).flatten(2).any(-1).any(0)   # [T]
    if got.shape[1] > 1 and not bool(wrong[0]) and bool(wrong[1:].any()):
        first = int(wrong.nonzero()[0])
        return (f"position 0 is right, position {first} is not: the first token needs neither the mask nor the "
                "other positions, so look at how later positions are embedded and masked")
    return None


def check_gpt_forward(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(model, idx) -> logits`` for a GPT laid out like the lesson's ``MyGPT``.

    ``idx: long [batch, T]`` with ``T <= context_length``; ``logits: [batch, T, vocab]``, equal to
    ``course.models.GPT``'s with the same weights (atol and rtol 1e-4).
    """
    size_hint = ("build the positions and the mask for this input's length T = idx.shape[1] "
                 "(torch.arange(T), causal_mask(T)), not for the context length")
    return check_function("gpt_forward", fn, _reference_forward, _forward_cases(), mistakes=GPT_FORWARD_MISTAKES,
                          output_names=("logits",), atol=1e-4, rtol=1e-4, context=torch.no_grad,
                          locate=_forward_locate,
                          exception_hints=[("must match the size of tensor", size_hint),
                                           ("does not broadcast", size_hint),
                                           ("index out of range", "a position id is past the position table: "
                                            "positions run 0, 1, ..., T - 1 (torch.arange(T))")],
                          strict=strict)


# ----------------------------------------------------------------------------- the decay groups

_ADAMW_DEFAULT_DECAY = 0.01   # torch.optim.AdamW's weight_decay when a group names none


def _decay_cases() -> list[tuple]:
    torch_state = torch.random.get_rng_state()
    try:  # the models' initialisation draws from the global generator: leave the learner's untouched
        torch.manual_seed(0)
        tied = GPT(GPTConfig(vocab_size=11, context_length=6, d_model=8, num_heads=2, num_layers=2))
        rms = nn.Sequential(nn.Embedding(7, 8),
                            TransformerBlock(8, 2, 16, norm="rms", bias=False, activation="gelu"),
                            LayerNorm(8), nn.Linear(8, 7))
        untied = GPT(GPTConfig(vocab_size=9, context_length=5, d_model=8, num_heads=2, num_layers=1,
                               tie_weights=False))
    finally:
        torch.random.set_rng_state(torch_state)
    return [(tied, 0.1), (rms, 0.05), (untied, 0.3)]


class _Reader:
    """Turns the groups a function returned into ``(groups holding each parameter, weight decay of each)``,
    both ``[n_parameters]`` in ``model.named_parameters()`` order, saying in one line what it cannot read."""

    def __init__(self, models: list[nn.Module]):
        self.where = {id(p): (k, i) for k, m in enumerate(models) for i, p in enumerate(m.parameters())}
        self.models = models

    def __call__(self, groups) -> tuple[Tensor, Tensor]:
        if isinstance(groups, Mapping):
            keys = ", ".join(repr(k) for k in list(groups)[:3])
            raise ValueError(f"return a list of groups (dicts), not one dict (keys {keys}): "
                             "[{'params': [...], 'weight_decay': ...}, {'params': [...], 'weight_decay': 0.0}]")
        if not isinstance(groups, (list, tuple)):
            raise ValueError("return a list of parameter groups, each a dict {'params': [...], 'weight_decay': ...}")
        found: list[tuple[list, float]] = []
        for j, group in enumerate(groups):
            if not isinstance(group, Mapping) or "params" not in group:
                raise ValueError(f"group {j} is {type(group).__name__}, not a dict with a 'params' list: each group "
                                 "is {'params': [tensors], 'weight_decay': number}")
            params = group["params"]
            if isinstance(params, Tensor):
                params = [params]
            elif isinstance(params, (set, frozenset)):
                raise ValueError(f"group {j}'s 'params' is a set: AdamW needs them in a fixed order, use a list")
            params = list(params)
            for p in params:
                if isinstance(p, str):
                    raise ValueError(f"group {j} holds the name {p!r}: 'params' holds the parameter tensors "
                                     "themselves (from model.named_parameters(), take the second item)")
                if not isinstance(p, Tensor):
                    raise ValueError(f"group {j} holds a {type(p).__name__}: 'params' holds parameter tensors")
                if id(p) not in self.where:
                    raise ValueError(f"group {j} holds a tensor that is not one of the model's parameters (a copy? "
                                     ".data, .detach() and .clone() make new tensors): list the parameters themselves")
            decay = group.get("weight_decay", _ADAMW_DEFAULT_DECAY)
            if isinstance(decay, Tensor) or not isinstance(decay, (int, float)):
                raise ValueError(f"group {j}'s 'weight_decay' is {type(decay).__name__}: give a number")
            found.append((params, float(decay)))
        models = {self.where[id(p)][0] for params, _ in found for p in params}
        if not models:
            raise ValueError("the groups hold no parameters: put the model's parameters into them")
        k = min(models)   # the case's model (every case has its own)
        n = sum(1 for _ in self.models[k].parameters())
        counts, decays = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.float64)
        for params, decay in found:
            for p in params:
                i = self.where[id(p)][1]
                counts[i] += 1
                decays[i] = decay
        return counts, decays


def _read_groups(model: nn.Module, groups) -> tuple[Tensor, Tensor]:
    return _Reader([model])(groups)


def _labelled(decay_fn):
    """A groups function read as ``(counts, decays)`` (for the reference and the mistakes)."""
    return lambda model, weight_decay: _read_groups(model, decay_fn(model, weight_decay))


def _two_groups(model, weight_decay, decayed, *, wd_other=0.0, skip=lambda name, p: False, walk="parameters"):
    """Groups with ``decayed(name, p)`` choosing the decayed parameters (for the mistakes)."""
    if walk == "modules":   # by module: every module's own weight and bias (a tied tensor twice)
        named = [(f"{mn}.{pn}", p) for mn, m in model.named_modules() for pn, p in m.named_parameters(recurse=False)
                 if isinstance(m, (nn.Linear, nn.Embedding))]
    else:
        named = list(model.named_parameters())
    named = [(n, p) for n, p in named if not skip(n, p)]
    return [{"params": [p for n, p in named if decayed(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decayed(n, p)], "weight_decay": wd_other}]


def _is_linear_bias(model: nn.Module, target: Tensor) -> bool:
    return any(isinstance(m, nn.Linear) and m.bias is target for m in model.modules())


def _is_embedding(model: nn.Module, target: Tensor) -> bool:
    return any(isinstance(m, nn.Embedding) and m.weight is target for m in model.modules())


def _tied_twice(m, wd):
    """Weights and biases of every Linear and Embedding, then the other modules' own parameters."""
    groups = _two_groups(m, wd, lambda n, p: p.dim() >= 2, walk="modules")
    rest = [p for mod in m.modules() if not isinstance(mod, (nn.Linear, nn.Embedding))
            for p in mod.parameters(recurse=False)]
    return groups + [{"params": rest, "weight_decay": 0.0}]


DECAY_GROUPS_MISTAKES = [
    Mistake("every parameter is decayed: biases and the norms' gains and shifts (1-D tensors) go in a group with "
            "weight_decay 0.0",
            lambda m, wd: [{"params": list(m.parameters()), "weight_decay": wd}]),
    Mistake("nothing is decayed: the weight matrices and embedding tables (2-D tensors) get the weight_decay "
            "argument",
            lambda m, wd: [{"params": list(m.parameters()), "weight_decay": 0.0}]),
    Mistake("the groups are swapped: the 2-D tensors (matrices, embeddings) decay, the 1-D ones (biases, norm "
            "gains and shifts) get 0.0",
            lambda m, wd: _two_groups(m, wd, lambda n, p: p.dim() < 2)),
    Mistake("the norms' gains are decayed (they are called 'weight' too): decay pulls them toward 0, but a "
            "gain's neutral value is 1; choose by shape, p.dim() >= 2, not by name",
            lambda m, wd: _two_groups(m, wd, lambda n, p: not n.endswith("bias"))),
    Mistake("the linear layers' biases are decayed: a bias is a 1-D tensor, like the norms' parameters, and gets 0.0",
            lambda m, wd: _two_groups(m, wd, lambda n, p: p.dim() >= 2 or _is_linear_bias(m, p))),
    Mistake("the embedding tables are not decayed: this course decays every 2-D tensor (p.dim() >= 2), the "
            "embeddings included, as nanoGPT does",
            lambda m, wd: _two_groups(m, wd, lambda n, p: p.dim() >= 2 and not _is_embedding(m, p))),
    Mistake("a tied tensor is in a group twice (the output layer shares the token embedding's weight): take the "
            "parameters from model.parameters() or model.named_parameters(), which list a shared tensor once",
            _tied_twice),
    Mistake("some parameters are in no group, so AdamW would never update them: walk model.named_parameters() "
            "(every parameter, once) rather than chosen module types",
            lambda m, wd: _two_groups(m, wd, lambda n, p: p.dim() >= 2,
                                      skip=lambda n, p: p.dim() < 2 and not n.endswith("bias"))),
    Mistake("the group without decay has no 'weight_decay': AdamW then applies its default, 0.01; give it "
            "'weight_decay': 0.0",
            lambda m, wd: [_two_groups(m, wd, lambda n, p: p.dim() >= 2)[0],
                           {"params": [p for p in m.parameters() if p.dim() < 2]}]),
    Mistake("the weight decay is a fixed number: use the weight_decay argument for the decayed group",
            lambda m, wd: _two_groups(m, 0.1, lambda n, p: p.dim() >= 2)),
]


def _kind(model: nn.Module, name: str, p: Tensor) -> str:
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if name.endswith("bias"):
        return "a bias"
    if isinstance(owner, nn.Embedding):
        return "an embedding table"
    if isinstance(owner, nn.Linear):
        return "a linear layer's weight matrix"
    if p.dim() == 1:
        return "a norm's gain"
    return f"a {p.dim()}-D tensor"


def _decay_locate(args, name, got, want) -> str | None:
    model, weight_decay = args
    named = list(model.named_parameters())
    index = int((got != want).nonzero()[0])
    pname, p = named[index]
    what = f"'{pname}' ({_kind(model, pname, p)}, {p.dim()}-D)"
    if name == "groups holding each parameter":
        times = int(got[index])
        if times == 0:
            return f"{what} is in no group: AdamW would never update it; every parameter goes in exactly one group"
        shared = sum(1 for _, q in model.named_parameters(remove_duplicate=False) if q is p)
        why = (" (it is shared, tied: model.parameters() lists it once)" if shared > 1
               else ": AdamW refuses a parameter in two groups")
        return f"{what} is in {times} groups{why}"
    have, expected = float(got[index]), float(want[index])
    default = (" (a group without 'weight_decay' gets AdamW's default, 0.01)"
               if math.isclose(have, _ADAMW_DEFAULT_DECAY) else "")
    return f"{what} gets weight decay {have:g}{default}, expected {expected:g}"


def check_decay_groups(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(model, weight_decay) -> [parameter groups]`` for AdamW.

    Every parameter of ``model`` in exactly one group; tensors with ``p.dim() >= 2`` get ``weight_decay``,
    the others 0.0 (a group without ``"weight_decay"`` gets AdamW's default, 0.01). Any number of groups.
    """
    cases = _decay_cases()
    return check_function("decay_groups", fn, _labelled(decay_groups), cases,
                          mistakes=[Mistake(m.hint, _labelled(m.fn)) for m in DECAY_GROUPS_MISTAKES],
                          output_names=("groups holding each parameter", "weight decay of each parameter"),
                          atol=1e-12, rtol=0.0, convert=_Reader([model for model, _ in cases]),
                          locate=_decay_locate, strict=strict)
