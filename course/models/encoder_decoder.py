"""The encoder-decoder of the 2017 Transformer: an encoder reads the source, a decoder writes the target.

Pre-norm by default (``norm_first=True``: ``x + sublayer(norm(x))`` in every block, and a final LayerNorm
at the end of each stack), where the 2017 paper is post-norm (``norm(x + sublayer(x))``, which
``norm_first=False`` gives): pre-norm trains without depending on a learning-rate warm-up (lesson 06
measures both wirings). The final norms are kept either way, as in ``torch.nn.Transformer``.

    source ids -> embedding * sqrt(d) + sinusoidal positions -> encoder blocks -> memory
    target ids (shifted right) -> embedding * sqrt(d) + positions
        -> decoder blocks (causal self-attention, cross-attention to memory, feed-forward)
        -> linear -> logits over the target vocabulary

Its encoder and decoder stacks are checked against ``torch.nn.Transformer`` with the same weights
(:func:`load_from_torch_transformer`); the cross-attention weights of every layer are returned on
request, for the alignment maps of lesson 09.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from course.attention import causal_mask
from course.layers import (DecoderBlock, LayerNorm, TransformerBlock, check_torch_decoder_layer, check_torch_encoder_layer,
                           torch_decoder_layer_plan, torch_encoder_layer_plan)
from course.models.sizes import complete_sizes
from course.positional import sinusoidal_encoding
from course.weights import MODULE_QUESTION, Step, load_plan


@dataclass
class EncoderDecoderConfig:
    """Sizes of an :class:`EncoderDecoder`; one vocabulary is shared by source and target."""

    vocab_size: int
    context_length: int = 64
    d_model: int = 128
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    d_ff: int | None = None
    dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = True
    pad_id: int = 0
    tie_weights: bool = True

    def __post_init__(self):
        complete_sizes(self)


class EncoderDecoder(nn.Module):
    """``forward(src [b, s], tgt_in [b, t]) -> logits [b, t, vocab]``; padding (``pad_id``) is masked."""

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer("positions", sinusoidal_encoding(c.context_length, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        block = dict(norm_first=c.norm_first, activation=c.activation, dropout=c.dropout)
        self.encoder_blocks = nn.ModuleList(TransformerBlock(c.d_model, c.num_heads, c.d_ff, **block)
                                            for _ in range(c.num_encoder_layers))
        self.decoder_blocks = nn.ModuleList(DecoderBlock(c.d_model, c.num_heads, c.d_ff, **block)
                                            for _ in range(c.num_decoder_layers))
        # nn.Transformer ends each stack with a LayerNorm; pre-norm stacks need it, post-norm ones have it anyway.
        self.encoder_norm = LayerNorm(c.d_model)
        self.decoder_norm = LayerNorm(c.d_model)
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        with torch.no_grad():
            self.token_embedding.weight[c.pad_id].zero_()  # xavier_uniform_ overwrote the padding row
        if c.tie_weights:
            self.output.weight = self.token_embedding.weight

    def _embed(self, ids: Tensor, what: str) -> Tensor:
        if ids.dim() != 2:
            raise ValueError(f"{what} ids must be [batch, seq], got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.config.context_length:
            raise ValueError(f"{what} of {ids.shape[1]} tokens is longer than "
                             f"context_length={self.config.context_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{what} ids must lie in [0, {self.config.vocab_size})")
        x = self.token_embedding(ids) * math.sqrt(self.config.d_model) + self.positions[: ids.shape[1]]
        return self.dropout(x)

    def source_mask(self, src: Tensor) -> Tensor:
        """``[batch, 1, 1, src]``: True at real (non-padding) source tokens."""
        return (src != self.config.pad_id)[:, None, None, :]

    def encode(self, src: Tensor) -> Tensor:
        """``src [b, s] -> memory [b, s, d]``."""
        return self.encoder_stack(self._embed(src, "source"), self.source_mask(src))

    def encoder_stack(self, x: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """The encoder on embeddings: ``x [b, s, d]``, ``src_mask [b, 1, 1, s]`` (True = real) -> ``[b, s, d]``.

        The same computation as ``torch.nn.Transformer.encoder`` (blocks, then the final norm).
        """
        self._check_embedded(x, "x")
        for block in self.encoder_blocks:
            x = block(x, mask=src_mask)
        return self.encoder_norm(x)

    def decoder_stack(self, y: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
                      need_weights: bool = False):
        """The decoder on embeddings: ``y [b, t, d]`` and ``memory [b, s, d]`` -> hidden ``[b, t, d]``.

        Causal self-attention, cross-attention to ``memory`` (``memory_mask [b, 1, 1, s]``, True = real),
        then the final norm: the same computation as ``torch.nn.Transformer.decoder``. With
        ``need_weights=True`` also returns the cross-attention weights of each layer, ``[b, heads, t, s]``.
        """
        self._check_embedded(y, "y")
        self._check_embedded(memory, "memory")
        if y.shape[0] != memory.shape[0]:
            raise ValueError(f"y {tuple(y.shape)} and memory {tuple(memory.shape)} have different batch sizes")
        self_mask = causal_mask(y.shape[1], device=y.device)
        cross = []
        for block in self.decoder_blocks:
            y, weights = block(y, memory, self_mask=self_mask, memory_mask=memory_mask, need_weights=True)
            cross.append(weights)
        y = self.decoder_norm(y)
        return (y, cross) if need_weights else y

    def _check_embedded(self, x: Tensor, what: str) -> None:
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"{what} must be [batch, seq, {self.config.d_model}], got {tuple(x.shape)}")

    def decode(self, tgt_in: Tensor, memory: Tensor, src: Tensor, need_weights: bool = False):
        """``tgt_in [b, t]`` and the encoder's ``memory`` -> logits ``[b, t, vocab]``.

        ``src [b, s]`` (the source ids) gives the padding mask for cross-attention. With
        ``need_weights=True`` also returns the cross-attention weights of every decoder layer,
        a list of ``[b, heads, t, s]`` tensors.
        """
        if src.shape[:2] != memory.shape[:2]:
            raise ValueError(f"src {tuple(src.shape)} does not match memory {tuple(memory.shape)}")
        hidden, cross = self.decoder_stack(self._embed(tgt_in, "target"), memory, self.source_mask(src),
                                           need_weights=True)
        logits = self.output(hidden)
        return (logits, cross) if need_weights else logits

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src), src)


def load_from_torch_transformer(model: EncoderDecoder, theirs: nn.Transformer) -> EncoderDecoder:
    """Copy an ``nn.Transformer``'s encoder and decoder stacks (and final norms) into ``model`` (in place; returns it).

    ``nn.Transformer`` has no embeddings or output layer: those stay as they are. A layer built
    differently raises a ``ValueError`` naming the layer; a parameter that does not fit raises
    :class:`course.weights.WeightMismatchError` naming it (``encoder_blocks.0.ffn.linear1.weight``).
    """
    if not isinstance(theirs, nn.Transformer):
        raise TypeError(f"expected torch.nn.Transformer, got {type(theirs).__name__}")
    if len(theirs.encoder.layers) != len(model.encoder_blocks) or len(theirs.decoder.layers) != len(model.decoder_blocks):
        raise ValueError(f"layer counts differ: ours {len(model.encoder_blocks)}+{len(model.decoder_blocks)}, "
                         f"torch's {len(theirs.encoder.layers)}+{len(theirs.decoder.layers)}")
    plan = []
    for side, blocks, layers, check, layer_plan in (
            ("encoder", model.encoder_blocks, theirs.encoder.layers, check_torch_encoder_layer, torch_encoder_layer_plan),
            ("decoder", model.decoder_blocks, theirs.decoder.layers, check_torch_decoder_layer, torch_decoder_layer_plan)):
        for i, (ours, layer) in enumerate(zip(blocks, layers)):
            try:
                check(ours, layer)
            except ValueError as exc:
                raise ValueError(f"{side} layer {i}: {exc}") from None
            plan += layer_plan(f"{side}_blocks.{i}.", f"{side}.layers.{i}.")
        plan += [Step(f"{side}_norm.weight", f"{side}.norm.weight"), Step(f"{side}_norm.bias", f"{side}.norm.bias")]
    return load_plan(model, theirs.state_dict(), plan, keep=("token_embedding.", "output."), question=MODULE_QUESTION)
