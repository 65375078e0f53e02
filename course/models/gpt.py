"""A GPT (decoder-only transformer) built from the course's own pieces, and GPT-2 weights for it.

    tokens -> token embedding + learned position embedding
           -> num_layers x pre-norm TransformerBlock with a causal mask
           -> final LayerNorm -> lm_head (tied to the token embedding) -> logits

With ``GPTConfig.from_hf(...)`` and :meth:`GPT.from_hf_gpt2` it loads the weights of Hugging Face's
``GPT2LMHeadModel`` and gives the same logits (tested to 1e-4 in float32).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from course.attention import causal_mask
from course.layers import LayerNorm, TransformerBlock
from course.models.sizes import complete_sizes
from course.positional import LearnedPositionalEmbedding
from course.weights import Step, chunk, load_plan, then, transpose

if TYPE_CHECKING:
    from course.efficient import KVCache


@dataclass
class GPTConfig:
    """Sizes of a :class:`GPT`. ``d_ff`` defaults to ``4 * d_model``."""

    vocab_size: int
    context_length: int = 128
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    activation: str = "gelu_tanh"  # GPT-2's "gelu_new"
    eps: float = 1e-5
    tie_weights: bool = True

    def __post_init__(self):
        complete_sizes(self)

    @classmethod
    def from_hf(cls, hf_config) -> "GPTConfig":
        """The configuration matching a ``transformers.GPT2Config``."""
        act = getattr(hf_config, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"only GPT-2's tanh GELU is supported, the checkpoint uses {act!r}")
        for flag, plain in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("reorder_and_upcast_attn", False)):
            if getattr(hf_config, flag, plain) != plain:
                raise ValueError(f"the checkpoint sets {flag}={not plain}; this GPT implements plain GPT-2 "
                                 f"attention ({flag}={plain}) and would give different logits")
        return cls(vocab_size=hf_config.vocab_size, context_length=hf_config.n_positions,
                   d_model=hf_config.n_embd, num_heads=hf_config.n_head, num_layers=hf_config.n_layer,
                   d_ff=hf_config.n_inner or 4 * hf_config.n_embd, eps=hf_config.layer_norm_epsilon)


class GPT(nn.Module):
    """Decoder-only language model. ``forward(idx: long [batch, seq]) -> logits [batch, seq, vocab]``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = LearnedPositionalEmbedding(c.context_length, c.d_model, dropout=c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.num_heads, c.d_ff, norm_first=True, activation=c.activation,
                             dropout=c.dropout, eps=c.eps)
            for _ in range(c.num_layers))
        self.final_norm = LayerNorm(c.d_model, c.eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation: small normal weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def check_input(self, idx: Tensor, start: int = 0) -> None:
        """Reject what the model cannot read, naming the problem (shape, dtype, length, id range).

        ``start``: the number of positions already read (in the KV caches) before ``idx``.
        """
        if not isinstance(idx, Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"GPT expects token ids of shape [batch, seq], got {shape}")
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"GPT expects integer token ids, got dtype {idx.dtype}")
        if idx.shape[1] == 0:
            raise ValueError("GPT got an empty sequence: give it at least one token")
        if start and start + idx.shape[1] > self.context_length:
            raise ValueError(f"{start} cached + {idx.shape[1]} new tokens are longer than the context window "
                             f"({self.context_length})")
        if idx.shape[1] > self.context_length:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the context window "
                             f"({self.context_length}); keep the last {self.context_length}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(idx.min())}..{int(idx.max())}")

    def hidden_states(self, idx: Tensor, need_weights: bool = False, caches: Sequence[KVCache] | None = None):
        """The final normalised hidden states: ``idx [batch, seq] -> [batch, seq, d_model]``; with
        ``need_weights=True``, ``(hidden, [attention weights [batch, heads, seq, seq] per layer])``.

        ``caches`` (one :class:`course.efficient.KVCache` per block, lesson 11): ``idx`` holds only the
        tokens after the ``len(caches[0])`` already read; they take the next positions, attend to the
        cached keys and values as well as to each other, and add theirs to the caches.
        """
        start = 0
        if caches is not None:
            if len(caches) != len(self.blocks):
                raise ValueError(f"need one KVCache per block: {len(self.blocks)} blocks, {len(caches)} caches")
            start = len(caches[0])
        self.check_input(idx, start)
        x = self.position_embedding(self.token_embedding(idx), start=start)
        mask = causal_mask(start + idx.shape[1], device=idx.device)[start:]  # [seq, start + seq]
        weights = []
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if not need_weights:  # training and generation: the attention's fast path
                x = block(x, mask=mask, cache=cache)
                continue
            x, w = block(x, mask=mask, need_weights=True, cache=cache)
            weights.append(w)
        return (self.final_norm(x), weights) if need_weights else self.final_norm(x)

    def forward(self, idx: Tensor, caches: Sequence[KVCache] | None = None) -> Tensor:
        """``idx [batch, seq] -> logits [batch, seq, vocab]``; with ``caches``, see :meth:`hidden_states`."""
        return self.lm_head(self.hidden_states(idx, caches=caches))

    @classmethod
    def from_hf_gpt2(cls, hf_model) -> "GPT":
        """A GPT with the weights of a ``transformers.GPT2LMHeadModel`` (or ``GPT2Model``)."""
        model = cls(GPTConfig.from_hf(hf_model.config))
        model.load_gpt2_state_dict(hf_model.state_dict())
        return model.eval()

    def load_gpt2_state_dict(self, state: Mapping[str, Tensor]) -> "GPT":
        """Load a GPT-2 state dict (Hugging Face names, with or without the ``transformer.`` prefix)."""
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        return load_plan(self, state, gpt2_plan(self.config), ignore_unused=("lm_head.weight", ".attn.bias", ".attn.masked_bias"))


def gpt2_plan(config: GPTConfig) -> list[Step]:
    """How each of our parameters comes from a GPT-2 checkpoint.

    GPT-2 stores its linear layers as ``Conv1D`` with weights ``[in, out]`` (transposed against
    ``nn.Linear``), and the query, key and value projections fused in ``attn.c_attn``.
    """
    plan = [Step("token_embedding.weight", "wte.weight"),
            Step("position_embedding.embedding.weight", "wpe.weight")]
    for i in range(config.num_layers):
        h, b = f"h.{i}", f"blocks.{i}"
        plan += [Step(f"{b}.norm1.weight", f"{h}.ln_1.weight"), Step(f"{b}.norm1.bias", f"{h}.ln_1.bias")]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            plan += [Step(f"{b}.self_attn.{name}.weight", f"{h}.attn.c_attn.weight", then(chunk(j, 3, dim=1), transpose)),
                     Step(f"{b}.self_attn.{name}.bias", f"{h}.attn.c_attn.bias", chunk(j, 3, dim=0))]
        plan += [Step(f"{b}.self_attn.out_proj.weight", f"{h}.attn.c_proj.weight", transpose),
                 Step(f"{b}.self_attn.out_proj.bias", f"{h}.attn.c_proj.bias"),
                 Step(f"{b}.norm2.weight", f"{h}.ln_2.weight"), Step(f"{b}.norm2.bias", f"{h}.ln_2.bias"),
                 Step(f"{b}.ffn.linear1.weight", f"{h}.mlp.c_fc.weight", transpose),
                 Step(f"{b}.ffn.linear1.bias", f"{h}.mlp.c_fc.bias"),
                 Step(f"{b}.ffn.linear2.weight", f"{h}.mlp.c_proj.weight", transpose),
                 Step(f"{b}.ffn.linear2.bias", f"{h}.mlp.c_proj.bias")]
    plan += [Step("final_norm.weight", "ln_f.weight"), Step("final_norm.bias", "ln_f.bias")]
    if not config.tie_weights:
        plan.append(Step("lm_head.weight", "wte.weight", note="GPT-2 ties lm_head to wte"))
    return plan
