"""Fine-tuning (lesson 16): four ways to adapt a pretrained model, and the data of instruction tuning.

- :class:`LoRALinear` and :func:`apply_lora`: low-rank adapters around ``nn.Linear`` layers,
  ``y = W x + b + (alpha / r) B A dropout(x)``, with merge and unmerge (Hu et al., 2021). Checked equal to
  ``peft``'s LoRA with the same weights in tests/course/test_finetune.py.
- :class:`PrefixTuning`: learned keys and values that every attention layer reads before the real tokens
  (Li and Liang, 2021), given to the model as a pre-filled KV cache (lesson 11). Checked equal to ``peft``'s
  prefix tuning on a Hugging Face Llama with the same weights.
- :class:`PromptTuning`: learned input embeddings put before the real tokens (Lester et al., 2021).
- :func:`freeze`, :func:`trainable_share`: what full fine-tuning trains and what the others leave frozen.
- Instruction data: :func:`instruction_pairs` draws prompt/response pairs of one of :data:`TASKS` in
  :data:`TEMPLATE`, :func:`instruction_batch` pads them and :func:`response_labels` keeps the loss on the
  response tokens only.
- :func:`score_answers`: greedy answers to held-out prompts, right as a whole (exact match) and of the right
  shape (:data:`SHAPES`), so that a method that learned the format but not the word shows.
"""
from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.attention import causal_mask
from course.efficient import KVCache
from course.layers import count_parameters
from course.lm import IGNORE_INDEX

__all__ = ["LoRALinear", "lora_forward", "merge_lora", "apply_lora", "lora_modules", "merge_all", "unmerge_all",
           "PrefixTuning", "prefix_attention", "PromptTuning", "freeze", "count_trainable", "trainable_share",
           "training_step_bytes",
           "TEMPLATE", "TASKS", "INSTRUCTIONS", "SHAPES", "instruction_words", "instruction_pairs", "format_prompt",
           "InstructionBatch", "instruction_batch", "response_labels", "response_loss", "answer", "instruction_of",
           "well_formed", "score_answers", "exact_match",
           "copy_peft_lora", "copy_peft_prefix", "lora_share_formula"]


# ---------------------------------------------------------------------------------------------
# What is trained
# ---------------------------------------------------------------------------------------------

def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``model`` (in place; returns it)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters; a shared (tied) tensor counts once."""
    return count_parameters(model, trainable_only=True), count_parameters(model)


def training_step_bytes(model: nn.Module, loss_fn: Callable[[nn.Module, object], Tensor], batch: object,
                        lr: float = 1e-3) -> int:
    """Peak bytes of the tensors one AdamW training step of a copy of ``model`` creates on ``batch``: the
    activations kept for the backward pass, the gradients and Adam's two moments (the weights themselves are
    not counted: every method holds the same frozen ones). Measured with
    :func:`course.efficient.measure_peak_bytes`; ``model`` itself is left untouched."""
    from course.efficient import measure_peak_bytes

    trial = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW([p for p in trial.parameters() if p.requires_grad], lr=lr)

    def step() -> None:
        loss = loss_fn(trial, batch)
        loss.backward()
        optimizer.step()

    return measure_peak_bytes(step)


def trainable_share(model: nn.Module) -> float:
    """The trainable fraction of ``model``'s parameters (0.0 ... 1.0)."""
    trainable, total = count_trainable(model)
    return trainable / total


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------

def lora_forward(x: Tensor, weight: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """``x [..., d_in] -> [..., d_out]``: ``x W^T + b + scaling * (x A^T) B^T``.

    ``weight [d_out, d_in]`` and ``bias [d_out]`` are the frozen layer's; ``A [r, d_in]`` projects down to the
    rank ``r``, ``B [d_out, r]`` back up; ``scaling = alpha / r``. The update ``B A`` is never formed: two thin
    products cost ``r (d_in + d_out)`` per vector instead of ``d_in d_out``.
    """
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, A), B)


def merge_lora(weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """``W [d_out, d_in] -> W + scaling * B A [d_out, d_in]``: one matrix that does what the adapter did."""
    return weight + scaling * (B @ A)


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with a low-rank adapter: ``forward(x [..., d_in]) -> [..., d_out]``.

    ``base`` (frozen) keeps its weight ``[d_out, d_in]``; ``lora_A [rank, d_in]`` starts random (Kaiming-uniform,
    as ``nn.Linear`` and ``peft`` initialise) and ``lora_B [d_out, rank]`` at zero, so the wrapped layer starts
    exactly equal to the original. ``scaling = alpha / rank``. ``dropout`` drops the adapter's input only.
    :meth:`merge` adds ``scaling * B A`` into the base weight (no extra cost at inference), :meth:`unmerge`
    takes it out again.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, name: str = "the layer"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRA wraps nn.Linear layers; {name} is a {type(base).__name__}")
        d_out, d_in = base.weight.shape
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(d_in, d_out):
            raise ValueError(f"rank {rank!r} does not fit {name} ({d_in} -> {d_out}): choose 1 <= rank <= "
                             f"{min(d_in, d_out)} (a rank as large as the layer is no longer low-rank)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout}")
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The base layer's weight (with the update inside it after :meth:`merge`)."""
        return self.base.weight

    def delta_weight(self) -> Tensor:
        """``scaling * B A``: ``[d_out, d_in]``, what the adapter adds to the weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight; the adapter then stops adding it (in place)."""
        if self.merged:
            raise ValueError("this LoRA layer is merged already; unmerge() it first")
        self.base.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the base weight again (equal to the original up to float rounding)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; nothing to unmerge")
        self.base.weight.sub_(self.delta_weight())
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"


def _matches(name: str, target: str) -> bool:
    """``peft``'s rule for a target given as a plain name: the module's full name is it or ends in ``.target``."""
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name is or ends in one of ``targets`` (``"q_proj"``
    matches ``blocks.0.self_attn.q_proj``) in a :class:`LoRALinear`, in place. Returns the wrapped names.

    One line (``ValueError``) for a target that names no module (it lists the linear layers' names), a target
    that is not ``nn.Linear``, or a rank that does not fit a layer.
    """
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("give apply_lora at least one target module name, e.g. ['q_proj', 'v_proj']")
    named = dict(model.named_modules())
    chosen: list[str] = []
    for target in targets:
        found = [name for name in named if name and _matches(name, target)]
        if not found:
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in named.items() if isinstance(m, nn.Linear)})
            raise ValueError(f"no module named {target!r} in this {type(model).__name__}; its linear layers are "
                             f"called {', '.join(linear)}")
        for name in found:
            if isinstance(named[name], LoRALinear):
                raise ValueError(f"{name} has a LoRA adapter already")
            if not isinstance(named[name], nn.Linear):
                raise ValueError(f"{target!r} names {name}, a {type(named[name]).__name__}, not an nn.Linear: "
                                 f"LoRA wraps linear layers (e.g. {name}.<one of its linear layers>)")
        chosen += found
    wrapped = {name: LoRALinear(named[name], rank, alpha, dropout, name) for name in chosen}  # all checked first
    freeze(model)
    for name, layer in wrapped.items():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return list(wrapped)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` inside ``model``, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_all(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model``; returns how many."""
    layers = lora_modules(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge_all(model: nn.Module) -> int:
    """Unmerge every LoRA layer of ``model``; returns how many."""
    layers = lora_modules(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def lora_share_formula(d_model: int, num_layers: int, total: int, rank: int, q_out: int, v_out: int) -> float:
    """The trainable share of LoRA on ``q_proj`` (``d_model -> q_out``) and ``v_proj`` (``d_model -> v_out``)
    in each of ``num_layers`` layers of a model of ``total`` parameters: ``r (2 d + q_out + v_out) L / total``."""
    return rank * (2 * d_model + q_out + v_out) * num_layers / total


# ---------------------------------------------------------------------------------------------
# Prefix tuning
# ---------------------------------------------------------------------------------------------

def prefix_attention(q: Tensor, k: Tensor, v: Tensor, prefix_k: Tensor, prefix_v: Tensor) -> Tensor:
    """Causal attention whose queries also see learned prefix slots.

    ``q, k, v [batch, heads, seq, d_head]``, ``prefix_k, prefix_v [heads, P, d_head]`` (the same for every
    example) -> ``[batch, heads, seq, d_head]``. Query ``i`` attends to all ``P`` prefix slots and to keys
    ``0..i``; scores are scaled by ``1 / sqrt(d_head)``.
    """
    batch, P = q.shape[0], prefix_k.shape[-2]
    keys = torch.cat([prefix_k.expand(batch, -1, -1, -1), k], dim=-2)      # [batch, heads, P + seq, d_head]
    values = torch.cat([prefix_v.expand(batch, -1, -1, -1), v], dim=-2)
    seq = q.shape[-2]
    allowed = causal_mask(P + seq, device=q.device)[P:]                     # [seq, P + seq]: prefix always
    scores = (q @ keys.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ values


def _attention_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, key/value heads, d_head)`` of a course GPT or Llama."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError(f"prefix tuning needs a course GPT or Llama (with .blocks), got {type(model).__name__}")
    attn = blocks[0].self_attn
    return len(blocks), getattr(attn, "num_kv_heads", attn.num_heads), attn.d_head


class PrefixTuning(nn.Module):
    """A frozen course GPT or Llama whose every attention layer reads ``num_prefix`` learned key/value slots
    before the real tokens. ``forward(idx [batch, seq]) -> logits [batch, seq, vocab]``.

    Parameters: ``keys`` and ``values``, each ``[layers, kv_heads, num_prefix, d_head]``. They go in as a
    pre-filled KV cache (lesson 11), so the real tokens take positions ``num_prefix ...`` (as in ``peft``) and
    at most ``context_length - num_prefix`` of them fit. ``init`` (optional ids ``[num_prefix]``): start from
    the keys and values the model computes for these tokens, i.e. from a real text prompt.
    """

    def __init__(self, model: nn.Module, num_prefix: int, init: Tensor | None = None, std: float = 0.02):
        super().__init__()
        layers, heads, d_head = _attention_shape(model)
        window = model.context_length
        if not isinstance(num_prefix, int) or num_prefix < 1:
            raise ValueError(f"num_prefix must be a positive number of slots, got {num_prefix!r}")
        if num_prefix >= window:
            raise ValueError(f"a prefix of {num_prefix} slots does not fit a context window of {window} positions: "
                             f"at most {window - 1} slots leave room for one real token")
        self.model = freeze(model)
        self.num_prefix = num_prefix
        shape = (layers, heads, num_prefix, d_head)
        w = model.lm_head.weight
        if init is None:
            self.keys = nn.Parameter(torch.randn(shape, dtype=w.dtype, device=w.device) * std)
            self.values = nn.Parameter(torch.randn(shape, dtype=w.dtype, device=w.device) * std)
        else:
            if init.shape != (num_prefix,):
                raise ValueError(f"init must hold {num_prefix} token ids, got shape {tuple(init.shape)}")
            caches = self._empty_caches()
            with torch.no_grad():
                model(init[None].to(w.device), caches=caches)
            self.keys = nn.Parameter(torch.stack([c.k[0] for c in caches]).clone())
            self.values = nn.Parameter(torch.stack([c.v[0] for c in caches]).clone())

    @property
    def context_length(self) -> int:
        """Real tokens that fit after the prefix (what ``course.generate.generate`` crops to)."""
        return self.model.context_length - self.num_prefix

    def _empty_caches(self) -> list[KVCache]:
        return [KVCache(self.model.context_length) for _ in self.model.blocks]

    def caches(self, batch: int) -> list[KVCache]:
        """One cache per layer holding the prefix: keys and values ``[batch, kv_heads, num_prefix, d_head]``."""
        caches = self._empty_caches()
        for i, cache in enumerate(caches):
            cache.append(self.keys[i].expand(batch, -1, -1, -1), self.values[i].expand(batch, -1, -1, -1))
        return caches

    def forward(self, idx: Tensor) -> Tensor:
        if isinstance(idx, Tensor) and idx.dim() == 2 and idx.shape[1] > self.context_length:
            raise ValueError(f"{idx.shape[1]} tokens after a prefix of {self.num_prefix} slots exceed the context "
                             f"window ({self.model.context_length}): keep at most {self.context_length}")
        batch = idx.shape[0] if isinstance(idx, Tensor) and idx.dim() == 2 else 1
        return self.model(idx, caches=self.caches(batch))


# ---------------------------------------------------------------------------------------------
# Prompt tuning
# ---------------------------------------------------------------------------------------------

class PromptTuning(nn.Module):
    """A frozen course GPT that reads ``num_virtual`` learned input vectors before the real tokens.

    ``forward(idx [batch, seq]) -> logits [batch, seq, vocab]`` (the logits of the real tokens only). The one
    parameter, ``prompt [num_virtual, d_model]``, stands where token embeddings would; positions are added to
    it as to them. It starts as the embeddings of the tokens ``init`` (ids ``[num_virtual]``) if given, else as
    the embeddings of random vocabulary entries (drawn with ``generator``).
    """

    def __init__(self, model: nn.Module, num_virtual: int, init: Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not hasattr(model, "position_embedding") or not hasattr(model, "blocks"):
            raise ValueError(f"prompt tuning here needs a course GPT, got {type(model).__name__}")
        window = model.context_length
        if not isinstance(num_virtual, int) or not 1 <= num_virtual < window:
            raise ValueError(f"num_virtual must lie in 1..{window - 1} (the context window holds {window}), "
                             f"got {num_virtual!r}")
        self.model = freeze(model)
        self.num_virtual = num_virtual
        table = model.token_embedding.weight
        if init is None:
            init = torch.randint(0, table.shape[0], (num_virtual,), generator=generator)
        if init.shape != (num_virtual,):
            raise ValueError(f"init must hold {num_virtual} token ids, got shape {tuple(init.shape)}")
        self.prompt = nn.Parameter(table[init.to(table.device)].detach().clone())

    @property
    def context_length(self) -> int:
        return self.model.context_length - self.num_virtual

    def forward(self, idx: Tensor) -> Tensor:
        m = self.model
        if not isinstance(idx, Tensor) or idx.dim() != 2 or not 1 <= idx.shape[1] <= self.context_length:
            got = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"PromptTuning reads token ids [batch, seq] with 1 <= seq <= {self.context_length} "
                             f"(after {self.num_virtual} virtual tokens), got {got}")
        m.check_input(idx)
        x = torch.cat([self.prompt.expand(idx.shape[0], -1, -1), m.token_embedding(idx)], dim=1)
        x = m.position_embedding(x)                                   # [batch, P + seq, d_model]
        mask = causal_mask(x.shape[1], device=idx.device)
        for block in m.blocks:
            x = block(x, mask=mask)
        return m.lm_head(m.final_norm(x[:, self.num_virtual:]))


# ---------------------------------------------------------------------------------------------
# Same weights as peft
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def copy_peft_lora(ours: nn.Module, peft_model: nn.Module, adapter: str = "default") -> int:
    """Copy the A and B matrices of every ``peft`` LoRA layer into the :class:`LoRALinear` of the same name in
    ``ours``. Returns how many layers were copied; a layer that ``ours`` lacks raises ``ValueError``."""
    mine = lora_modules(ours)
    copied = 0
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or adapter not in getattr(module, "lora_A", {}):
            continue
        key = next((n for n in mine if name == n or name.endswith("." + n)), None)
        if key is None:
            raise ValueError(f"peft has a LoRA layer {name} that this model lacks")
        mine[key].lora_A.copy_(module.lora_A[adapter].weight)
        mine[key].lora_B.copy_(module.lora_B[adapter].weight)
        copied += 1
    return copied


@torch.no_grad()
def copy_peft_prefix(ours: PrefixTuning, peft_model: nn.Module, adapter: str = "default") -> None:
    """Copy ``peft``'s prefix (its table ``[P, layers * 2 * kv_heads * d_head]``, keys and values of each layer
    in turn) into ``ours.keys`` and ``ours.values`` ``[layers, kv_heads, P, d_head]``."""
    table = peft_model.prompt_encoder[adapter].embedding.weight
    layers, heads, P, d_head = ours.keys.shape
    if table.shape != (P, layers * 2 * heads * d_head):
        raise ValueError(f"peft's prefix table is {tuple(table.shape)}, ours needs {(P, layers * 2 * heads * d_head)}")
    kv = table.view(P, layers, 2, heads, d_head).permute(2, 1, 3, 0, 4)   # [2, layers, heads, P, d_head]
    ours.keys.copy_(kv[0])
    ours.values.copy_(kv[1])


# ---------------------------------------------------------------------------------------------
# Instruction data
# ---------------------------------------------------------------------------------------------

TEMPLATE = "Q: {instruction} {word}\nA: "
"""An instruction prompt: the model answers after ``A: `` and ends its answer with a newline."""

TASKS: dict[str, dict[str, Callable[[str], str]]] = {
    # answers in Python syntax the pretrained model has read hundreds to thousands of times, the word copied in
    "python": {
        "call": lambda w: f"{w}()",
        "attribute": lambda w: f"self.{w}",
        "string": lambda w: f"'{w}'",
        "define": lambda w: f"def {w}(self):",
    },
    # string functions its pretraining never computed
    "strings": {
        "reverse": lambda w: w[::-1],
        "upper": str.upper,
    },
}
"""The lesson's two instruction tasks: each maps an instruction to the answer it asks for, given a word."""

INSTRUCTIONS: dict[str, Callable[[str], str]] = {name: fn for task in TASKS.values() for name, fn in task.items()}
"""Every instruction of :data:`TASKS`, by name."""

SHAPES: dict[str, str] = {
    "call": r"[a-z_]+\(\)",
    "attribute": r"self\.[a-z_]+",
    "string": r"'[a-z_]+'",
    "define": r"def [a-z_]+\(self\):",
    "reverse": r"[a-z]+",
    "upper": r"[A-Z]+",
}
"""What a well-formed answer to each instruction looks like, whatever the word (a full-match regex): right shape,
perhaps the wrong word."""


def format_prompt(instruction: str, word: str) -> str:
    """The prompt for one instruction: ``TEMPLATE`` filled in (one line message for an unknown instruction)."""
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {instruction!r}; the tasks know {', '.join(INSTRUCTIONS)}")
    return TEMPLATE.format(instruction=instruction, word=word)


def instruction_words(text: str, lo: int = 3, hi: int = 6) -> list[str]:
    """The distinct lower-case words of ``lo..hi`` letters in ``text``, sorted."""
    return sorted(set(re.findall(rf"\b[a-z]{{{lo},{hi}}}\b", text)))


def instruction_pairs(words: Sequence[str], n_test: int, seed: int = 0, task: str = "python",
                      instructions: Iterable[str] | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` lists of ``(prompt, response)``: every word with every instruction of ``task`` (a key of
    :data:`TASKS`; or the names given in ``instructions``); the ``n_test`` test words (drawn with ``seed``) never
    appear in training. Each response ends in a newline."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    names = list(instructions or TASKS[task])
    pool = list(words)
    if len(pool) <= n_test:
        raise ValueError(f"need more than {n_test} words to hold {n_test} out, got {len(pool)}")
    random.Random(seed).shuffle(pool)

    def pairs(ws: Sequence[str]) -> list[tuple[str, str]]:
        return [(format_prompt(name, w), INSTRUCTIONS[name](w) + "\n") for w in ws for name in names]
    return pairs(pool[n_test:]), pairs(pool[:n_test])


def response_labels(ids: Tensor, prompt_lengths: Tensor, lengths: Tensor) -> Tensor:
    """Labels for a response-only loss: ``ids [batch, seq] -> labels [batch, seq]``, equal to ``ids`` on the
    response tokens (positions ``prompt_lengths[b] <= t < lengths[b]``) and ``IGNORE_INDEX`` (-100) on the
    prompt and the padding. As in Hugging Face, label ``t`` is the target of the prediction made at ``t - 1``."""
    positions = torch.arange(ids.shape[1], device=ids.device)[None]               # [1, seq]
    keep = (positions >= prompt_lengths[:, None]) & (positions < lengths[:, None])  # [batch, seq]
    return ids.masked_fill(~keep, IGNORE_INDEX)


@dataclass
class InstructionBatch:
    """Padded examples: ``ids [batch, seq]`` (prompt, response, then padding) and ``labels [batch, seq]``."""

    ids: Tensor
    labels: Tensor


def instruction_batch(pairs: Sequence[tuple[str, str]], encode: Callable[[str], list[int]], pad_id: int,
                      response_only: bool = True) -> InstructionBatch:
    """Encode and right-pad ``(prompt, response)`` pairs. ``response_only``: labels on the response tokens
    (:func:`response_labels`); else on every real token (the prompt too), as plain language modelling."""
    rows = [(encode(p), encode(r)) for p, r in pairs]
    seq = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), seq), pad_id, dtype=torch.long)
    for b, (p, r) in enumerate(rows):
        ids[b, :len(p) + len(r)] = torch.tensor(p + r)
    prompt_lengths = torch.tensor([len(p) if response_only else 0 for p, _ in rows])
    lengths = torch.tensor([len(p) + len(r) for p, r in rows])
    return InstructionBatch(ids, response_labels(ids, prompt_lengths, lengths))


def response_loss(model: nn.Module, batch: InstructionBatch) -> Tensor:
    """Mean next-token cross-entropy over the labelled tokens: logits at ``t`` predict ``labels[t + 1]``."""
    logits = model(batch.ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def answer(model: nn.Module, prompts: Sequence[str], encode: Callable[[str], list[int]],
           decode: Callable[[list[int]], str], max_new_tokens: int = 20, stop: str = "\n") -> list[str]:
    """Greedy answers to ``prompts`` (each cut at ``stop``), prompts of equal length batched together. A batch
    stops generating once every answer in it holds ``stop`` (or after ``max_new_tokens`` tokens)."""
    from course.generate import generate

    out: dict[int, str] = {}
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(encode(p)), []).append(i)
    for indices in by_length.values():
        idx = torch.tensor([encode(prompts[i]) for i in indices])
        start = idx.shape[1]
        for _ in range(max_new_tokens):
            idx = generate(model, idx, 1, greedy=True)
            if all(stop in decode(row) for row in idx[:, start:].tolist()):
                break
        for i, row in zip(indices, idx[:, start:].tolist()):
            out[i] = decode(row).split(stop)[0]
    return [out[i] for i in range(len(prompts))]


def instruction_of(prompt: str) -> str:
    """The instruction a :data:`TEMPLATE` prompt asks for (``"Q: call log\\nA: "`` -> ``"call"``)."""
    return prompt.split()[1]


def well_formed(prompt: str, reply: str) -> bool:
    """Whether ``reply`` has the shape :data:`SHAPES` gives the prompt's instruction (the word may be wrong)."""
    return re.fullmatch(SHAPES[instruction_of(prompt)], reply) is not None


def score_answers(model: nn.Module, pairs: Sequence[tuple[str, str]], encode: Callable[[str], list[int]],
                  decode: Callable[[list[int]], str], max_new_tokens: int = 20) -> dict[str, float]:
    """Greedy answers to the prompts of ``(prompt, response)`` pairs, scored two ways: ``"exact"``, the share
    equal to the response (its newline aside), and ``"shape"``, the share :func:`well_formed` for their
    instruction."""
    answers = answer(model, [p for p, _ in pairs], encode, decode, max_new_tokens)
    return {"exact": sum(a == r.rstrip("\n") for a, (_, r) in zip(answers, pairs)) / len(pairs),
            "shape": sum(well_formed(p, a) for a, (p, _) in zip(answers, pairs)) / len(pairs)}


def exact_match(model: nn.Module, pairs: Sequence[tuple[str, str]], encode: Callable[[str], list[int]],
                decode: Callable[[list[int]], str], max_new_tokens: int = 20) -> float:
    """The share of ``(prompt, response)`` pairs whose greedy answer equals the response (its newline aside)."""
    return score_answers(model, pairs, encode, decode, max_new_tokens)["exact"]
