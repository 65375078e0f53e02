"""A BERT-style encoder built from the course's own pieces, with heads, and BERT weights for it.

    token + position + segment embeddings -> LayerNorm
        -> num_layers x post-norm TransformerBlock (GELU), attending to every non-padding token
        -> hidden states [batch, seq, d_model]

Post-norm blocks with the exact (erf) GELU and LayerNorm eps 1e-12 are BERT's choices; with them,
:meth:`BertEncoder.load_bert_state_dict` takes Hugging Face ``BertModel`` weights and gives the same
hidden states (tested to 1e-4 in float32), for example all-MiniLM-L6-v2's.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.layers import LayerNorm, TransformerBlock
from course.models.sizes import complete_sizes
from course.weights import Step, load_plan


@dataclass
class BertConfig:
    """Sizes of a :class:`BertEncoder`. ``d_ff`` defaults to ``4 * d_model``."""

    vocab_size: int
    context_length: int = 128
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    d_ff: int | None = None
    type_vocab_size: int = 2
    dropout: float = 0.0
    eps: float = 1e-12
    pad_id: int = 0

    def __post_init__(self):
        complete_sizes(self)

    @classmethod
    def from_hf(cls, hf_config) -> "BertConfig":
        """The configuration matching a ``transformers.BertConfig``."""
        if getattr(hf_config, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"only the exact GELU is supported, the checkpoint uses {hf_config.hidden_act!r}")
        return cls(vocab_size=hf_config.vocab_size, context_length=hf_config.max_position_embeddings,
                   d_model=hf_config.hidden_size, num_heads=hf_config.num_attention_heads,
                   num_layers=hf_config.num_hidden_layers, d_ff=hf_config.intermediate_size,
                   type_vocab_size=hf_config.type_vocab_size, eps=hf_config.layer_norm_eps,
                   pad_id=hf_config.pad_token_id or 0)


class BertEncoder(nn.Module):
    """``forward(input_ids [b, s], attention_mask=None, token_type_ids=None) -> hidden [b, s, d]``;
    with ``need_weights=True`` it returns ``(hidden, [attention weights [b, heads, s, s] per layer])``.

    ``attention_mask`` is 1 (or True) for real tokens and 0 for padding, as in Hugging Face; by
    default every position whose id is not ``pad_id`` is attended to.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = nn.Embedding(c.context_length, c.d_model)
        self.segment_embedding = nn.Embedding(c.type_vocab_size, c.d_model)
        self.embedding_norm = LayerNorm(c.d_model, c.eps)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.num_heads, c.d_ff, norm_first=False, activation="gelu",
                             dropout=c.dropout, eps=c.eps)
            for _ in range(c.num_layers))
        self.apply(_init_bert)

    def check_input(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"BertEncoder expects token ids of shape [batch, seq], got {shape}")
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than the model's "
                             f"{self.config.context_length} positions")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                             f"{int(input_ids.min())}..{int(input_ids.max())}")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, need_weights: bool = False):
        """-> hidden ``[b, s, d]``; with ``need_weights=True``, ``(hidden, [weights [b, heads, s, s] per layer])``."""
        self.check_input(input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_id
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions) + self.segment_embedding(token_type_ids)
        x = self.dropout(self.embedding_norm(x))
        keys = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, seq]: padding is never attended to
        if not need_weights:
            for block in self.blocks:
                x = block(x, mask=keys)
            return x
        weights = []
        for block in self.blocks:
            x, w = block(x, mask=keys, need_weights=True)
            weights.append(w)
        return x, weights

    def load_bert_state_dict(self, state: Mapping[str, Tensor]) -> "BertEncoder":
        """Load Hugging Face ``BertModel`` weights (names with or without the ``bert.`` prefix).

        The pooler and any pre-training heads (``cls.*``), if present, are ignored.
        """
        state = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("cls.")}
        return load_plan(self, state, bert_plan(self.config),
                         ignore_unused=("position_ids", "pooler.dense.weight", "pooler.dense.bias"))


def _init_bert(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def bert_plan(config: BertConfig, prefix: str = "") -> list[Step]:
    """How each of our encoder's parameters comes from a Hugging Face BERT checkpoint."""
    e = "embeddings"
    plan = [Step(f"{prefix}token_embedding.weight", f"{e}.word_embeddings.weight"),
            Step(f"{prefix}position_embedding.weight", f"{e}.position_embeddings.weight"),
            Step(f"{prefix}segment_embedding.weight", f"{e}.token_type_embeddings.weight"),
            Step(f"{prefix}embedding_norm.weight", f"{e}.LayerNorm.weight"),
            Step(f"{prefix}embedding_norm.bias", f"{e}.LayerNorm.bias")]
    for i in range(config.num_layers):
        h, b = f"encoder.layer.{i}", f"{prefix}blocks.{i}"
        pairs = [("self_attn.q_proj", "attention.self.query"), ("self_attn.k_proj", "attention.self.key"),
                 ("self_attn.v_proj", "attention.self.value"), ("self_attn.out_proj", "attention.output.dense"),
                 ("norm1", "attention.output.LayerNorm"), ("ffn.linear1", "intermediate.dense"),
                 ("ffn.linear2", "output.dense"), ("norm2", "output.LayerNorm")]
        for ours, theirs in pairs:
            plan += [Step(f"{b}.{ours}.weight", f"{h}.{theirs}.weight"), Step(f"{b}.{ours}.bias", f"{h}.{theirs}.bias")]
    return plan


class BertForMaskedLM(nn.Module):
    """Encoder plus BERT's masked-language-model head: ``forward(ids, ...) -> logits [b, s, vocab]``.

    The head is dense -> GELU -> LayerNorm -> a decoder tied to the token embeddings, plus a bias.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.transform = nn.Linear(config.d_model, config.d_model)
        self.transform_norm = LayerNorm(config.d_model, config.eps)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        _init_bert(self.transform)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        h = self.transform_norm(F.gelu(self.transform(h)))
        return h @ self.encoder.token_embedding.weight.t() + self.decoder_bias

    def load_bert_state_dict(self, state: Mapping[str, Tensor]) -> "BertForMaskedLM":
        """Load Hugging Face ``BertForMaskedLM`` weights."""
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        p = "cls.predictions"
        plan = bert_plan(self.config, prefix="encoder.") + [
            Step("transform.weight", f"{p}.transform.dense.weight"), Step("transform.bias", f"{p}.transform.dense.bias"),
            Step("transform_norm.weight", f"{p}.transform.LayerNorm.weight"),
            Step("transform_norm.bias", f"{p}.transform.LayerNorm.bias"),
            Step("decoder_bias", f"{p}.bias")]
        return load_plan(self, state, plan, ignore_unused=("position_ids", f"{p}.decoder.weight",
                                                           f"{p}.decoder.bias", "pooler.dense.weight", "pooler.dense.bias"))


class BertClassifier(nn.Module):
    """Encoder plus a classification head on the first ([CLS]) position: ``-> logits [b, classes]``."""

    def __init__(self, config: BertConfig, num_classes: int, encoder: BertEncoder | None = None):
        super().__init__()
        self.encoder = encoder if encoder is not None else BertEncoder(config)
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.classifier = nn.Linear(config.d_model, num_classes)
        _init_bert(self.pooler)
        _init_bert(self.classifier)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))
