"""A Llama-architecture decoder built from the course's pieces (lesson 12), and Hugging Face weights for it.

    tokens -> token embedding (no position embedding: positions enter through RoPE)
           -> num_layers x pre-norm block:
                  x = x + attention(RMSNorm(x))     grouped-query attention, RoPE on split halves, no biases
                  x = x + SwiGLU(RMSNorm(x))        gated feed-forward, no biases
           -> final RMSNorm -> lm_head (tied to the token embedding) -> logits

What changed from the GPT of lesson 08, piece by piece: RMSNorm instead of LayerNorm (lesson 06), rotary
position embeddings on split halves instead of learned positions (lesson 04), SwiGLU instead of a GELU
feed-forward (lesson 06), grouped-query attention (several query heads share one key/value head), and no
biases anywhere. SmolLM2, Llama 2 and 3 and Mistral share this shape.

:class:`LlamaConfig` is read from a Hugging Face ``LlamaConfig`` (:meth:`LlamaConfig.from_hf`); weights
load through a weight plan (:func:`llama_plan`, :mod:`course.weights`) that names the first parameter that
does not fit. Given the same weights, :class:`Llama` gives ``transformers.LlamaForCausalLM``'s logits to
1e-4 in float32, and the same greedy tokens (tests/course/test_llama.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.attention import causal_mask, merge_heads
from course.device import model_device
from course.efficient import KVCache
from course.generate import sample_next, validate_sampling
from course.layers import FeedForward, RMSNorm, count_parameters, rms_norm
from course.positional import apply_rope
from course.utils import eval_mode, shape_of
from course.weights import Step, load_plan

__all__ = ["LlamaConfig", "Llama", "LlamaBlock", "GroupedQueryAttention", "LlamaRMSNorm", "LlamaKVCache",
           "llama_rms_norm", "rope_halves", "float32_frequencies", "repeat_kv", "decode_step", "llama_plan", "generate",
           "kv_cache_bytes", "prompt_length_problem", "describe"]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class LlamaConfig:
    """Sizes of a :class:`Llama`. The defaults are SmolLM2-135M's.

    ``num_kv_heads`` key/value heads serve ``num_heads`` query heads (``num_heads`` must be a multiple of it):
    equal, it is ordinary multi-head attention; 1, multi-query attention. ``d_head`` defaults to
    ``d_model // num_heads``. ``rope_base`` is Hugging Face's ``rope_theta``.
    """

    vocab_size: int = 49152
    context_length: int = 8192
    d_model: int = 576
    num_heads: int = 9
    num_kv_heads: int = 3
    num_layers: int = 30
    d_ff: int = 1536
    d_head: int | None = None
    rope_base: float = 100000.0
    eps: float = 1e-5
    tie_weights: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "num_heads", "num_kv_heads", "num_layers", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LlamaConfig: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig: num_heads={self.num_heads} must be a multiple of num_kv_heads="
                             f"{self.num_kv_heads} (each key/value head serves the same number of query heads)")
        if self.d_head is None:
            if self.d_model % self.num_heads:
                raise ValueError(f"LlamaConfig: d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                                 "give d_head")
            self.d_head = self.d_model // self.num_heads
        if self.d_head % 2:
            raise ValueError(f"LlamaConfig: d_head={self.d_head} must be even (RoPE rotates pairs of dimensions)")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, hf_config: Any) -> LlamaConfig:
        """The configuration matching a ``transformers.LlamaConfig`` (a one-line ``ValueError`` for a variant
        this model does not implement: biases, another activation, scaled RoPE)."""
        if getattr(hf_config, "model_type", "llama") != "llama":
            raise ValueError(f"expected a Llama configuration, got model_type={hf_config.model_type!r}")
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"the checkpoint's feed-forward uses {act!r}; this Llama implements SwiGLU (silu)")
        for flag in ("attention_bias", "mlp_bias"):
            if getattr(hf_config, flag, False):
                raise ValueError(f"the checkpoint sets {flag}=True; this Llama has no biases")
        rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in (None, "default"):
            raise ValueError(f"the checkpoint scales RoPE ({kind!r}); this Llama implements plain RoPE")
        base = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
        if base is None:
            raise ValueError("the configuration gives no rope_theta (RoPE's base)")
        heads = hf_config.num_attention_heads
        return cls(vocab_size=hf_config.vocab_size, context_length=hf_config.max_position_embeddings,
                   d_model=hf_config.hidden_size, num_heads=heads,
                   num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
                   num_layers=hf_config.num_hidden_layers, d_ff=hf_config.intermediate_size,
                   d_head=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
                   rope_base=float(base), eps=float(hf_config.rms_norm_eps),
                   tie_weights=bool(getattr(hf_config, "tie_word_embeddings", False)))


# ---------------------------------------------------------------------------------------------
# The pieces, as functions (the lesson's exercises) and modules
# ---------------------------------------------------------------------------------------------

def llama_rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm as Llama computes it: ``x [..., d]``, ``weight [d]`` -> ``[..., d]`` in ``x``'s dtype.

    The mean square is taken in float32 whatever ``x``'s dtype (in float16, squares above 65504 overflow
    to inf), the normalised vector is cast back to ``x``'s dtype, then scaled by ``weight``. In float32 this
    is :func:`course.layers.rms_norm` (lesson 06).
    """
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"llama_rms_norm: weight has shape {shape_of(weight)}, expected ({x.shape[-1]},) for x of "
                         f"shape {shape_of(x)}")
    return rms_norm(x.float(), None, eps).to(x.dtype) * weight


class LlamaRMSNorm(RMSNorm):
    """:class:`course.layers.RMSNorm` with Llama's float32 statistics (:func:`llama_rms_norm`)."""

    def forward(self, x: Tensor) -> Tensor:
        return llama_rms_norm(x, self.weight, self.eps)


def rope_halves(x: Tensor, positions: Tensor, base: float, omega: Tensor | None = None) -> Tensor:
    """RoPE on split halves (Llama's layout): dimension ``i`` turns with dimension ``i + d/2``.

    ``x: [..., seq, d]``, ``positions: [seq]`` (long) -> ``[..., seq, d]``; pair ``i`` turns by
    ``position * base ** (-2i / d)``. The same rotation as lesson 04's, with the pairs laid out as
    ``(x[..., :d/2], x[..., d/2:])`` instead of adjacent dimensions: :func:`course.positional.apply_rope`
    with ``interleaved=False``. ``omega``: the frequencies as rounded elsewhere (:func:`float32_frequencies`).
    """
    return apply_rope(x, positions, base, interleaved=False, omega=omega)


def float32_frequencies(d_head: int, base: float) -> Tensor:
    """RoPE's frequencies ``base ** (-2i / d_head)`` computed as Hugging Face's Llama computes them: the power
    in float32, then its reciprocal (``[d_head // 2]``). :func:`course.positional.sinusoidal_frequencies`
    computes them in float64 and rounds once; the two differ in the last bit for some ``i``, which moves
    SmolLM2's logits by about 1e-4 (lesson 12 measures it), so the model uses these.
    """
    return 1.0 / (float(base) ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Give every query head its key/value head: ``[batch, kv_heads, seq, d_head]`` ->
    ``[batch, kv_heads * n_rep, seq, d_head]``, each head repeated ``n_rep`` times in a row (heads
    ``0..n_rep-1`` read key/value head 0, the next ``n_rep`` head 1, ...), as Hugging Face's Llama groups them."""
    if x.dim() != 4:
        raise ValueError(f"repeat_kv expects [batch, kv_heads, seq, d_head], got shape {shape_of(x)}")
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


def decode_step(q: Tensor, k_new: Tensor, v_new: Tensor, cache_k: Tensor, cache_v: Tensor,
                base: float, omega: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One token's grouped-query attention against a KV cache.

    ``q: [batch, heads, 1, d_head]``, ``k_new, v_new: [batch, kv_heads, 1, d_head]`` (projected, not yet
    rotated), ``cache_k, cache_v: [batch, kv_heads, t, d_head]`` (the ``t`` earlier positions, keys
    already rotated). The new token is at position ``t``: ``q`` and ``k_new`` are rotated there (RoPE on
    split halves, ``base``), ``k_new`` and ``v_new`` are appended to the cache, the key/value heads are
    repeated for their query heads, and the query attends to all ``t + 1`` positions (no mask: nothing lies
    in its future). -> ``(out [batch, heads, 1, d_head], cache_k, cache_v [batch, kv_heads, t + 1, d_head])``.
    ``omega``: see :func:`rope_halves`.
    """
    t = cache_k.shape[-2]
    position = torch.tensor([t], device=q.device)
    q, k_new = rope_halves(q, position, base, omega), rope_halves(k_new, position, base, omega)
    cache_k, cache_v = torch.cat([cache_k, k_new], dim=-2), torch.cat([cache_v, v_new], dim=-2)
    n_rep = q.shape[1] // cache_k.shape[1]
    out = F.scaled_dot_product_attention(q, repeat_kv(cache_k, n_rep), repeat_kv(cache_v, n_rep))
    return out, cache_k, cache_v


class LlamaKVCache(KVCache):
    """Lesson 11's :class:`course.efficient.KVCache`, one per block. ``full_heads=True`` stores the keys and
    values after :func:`repeat_kv`, one copy per query head, as multi-head attention would have to: the
    outputs are the same, the memory ``group_size`` times larger (the lesson measures it)."""

    def __init__(self, context_length: int, full_heads: bool = False):
        super().__init__(context_length)
        self.full_heads = full_heads

    @property
    def nbytes(self) -> int:
        """Bytes held: keys and values."""
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


def kv_cache_bytes(caches: Sequence[KVCache]) -> int:
    """Bytes held by a model's caches (keys and values of every layer)."""
    return sum(0 if c.k is None else c.k.nbytes + c.v.nbytes for c in caches)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``num_kv_heads`` key/value heads shared by ``num_heads`` query heads,
    RoPE on split halves and no biases (Llama's attention).

    ``forward(x [batch, seq, d_model], start=0, cache=None) -> [batch, seq, d_model]``. ``start``: the
    position of ``x``'s first token (the number of positions in ``cache``). Parameters: ``q_proj``
    ``[heads * d_head, d_model]``, ``k_proj`` and ``v_proj`` ``[kv_heads * d_head, d_model]``, ``out_proj``
    ``[d_model, heads * d_head]``. With ``num_kv_heads == num_heads`` it is multi-head attention with RoPE.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, d_head: int | None = None,
                 rope_base: float = 10000.0):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.d_head = d_head or d_model // num_heads
        self.rope_base = rope_base
        self.register_buffer("omega", float32_frequencies(self.d_head, rope_base), persistent=False)
        self.q_proj = nn.Linear(d_model, num_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * self.d_head, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * self.d_head, bias=False)
        self.out_proj = nn.Linear(num_heads * self.d_head, d_model, bias=False)

    def _heads(self, x: Tensor, heads: int) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, heads, self.d_head).transpose(1, 2)        # [batch, heads, seq, d_head]

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"GroupedQueryAttention expects [batch, seq, {self.d_model}], got {shape_of(x)}")
        seq = x.shape[1]
        n_rep = self.num_heads // self.num_kv_heads
        positions = torch.arange(start, start + seq, device=x.device)
        q = rope_halves(self._heads(self.q_proj(x), self.num_heads), positions, self.rope_base, self.omega)
        k = rope_halves(self._heads(self.k_proj(x), self.num_kv_heads), positions, self.rope_base, self.omega)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        full = cache is not None and getattr(cache, "full_heads", False)
        if full:                                   # multi-head style: one cached copy per query head
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        if cache is not None:
            k, v = cache.append(k, v)              # [batch, kv_heads, start + seq, d_head]
        if not full:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        if seq == 1:                               # one new token sees every cached one: no mask
            out = F.scaled_dot_product_attention(q, k, v)
        elif k.shape[-2] == seq:                   # no cache: the plain causal mask
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:                                      # several new tokens after cached ones
            mask = causal_mask(k.shape[-2], device=x.device)[-seq:]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(merge_heads(out))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"d_head={self.d_head}, rope_base={self.rope_base:g}")


class LlamaBlock(nn.Module):
    """One pre-norm Llama block: ``x + attention(RMSNorm(x))``, then ``x + SwiGLU(RMSNorm(x))``.

    ``forward(x [batch, seq, d_model], start=0, cache=None) -> [batch, seq, d_model]``. The feed-forward
    net is :class:`course.layers.FeedForward` with ``activation="swiglu"`` and no biases (``gate`` is
    W_gate, ``linear1`` W_up, ``linear2`` W_down).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.attn_norm = LlamaRMSNorm(c.d_model, c.eps)
        self.self_attn = GroupedQueryAttention(c.d_model, c.num_heads, c.num_kv_heads, c.d_head, c.rope_base)
        self.ffn_norm = LlamaRMSNorm(c.d_model, c.eps)
        self.ffn = FeedForward(c.d_model, c.d_ff, activation="swiglu", bias=False)

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.attn_norm(x), start, cache)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """Decoder-only Llama. ``forward(idx: long [batch, seq], caches=None) -> logits [batch, seq, vocab]``.

    ``caches`` (one :class:`LlamaKVCache` per block, from :meth:`new_caches`): ``idx`` holds only the tokens
    after the ``len(caches[0])`` already read; they take the next positions and their keys and values join
    the caches.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.num_layers))
        self.final_norm = LlamaRMSNorm(c.d_model, c.eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def new_caches(self, full_heads: bool = False) -> list[LlamaKVCache]:
        """One empty cache per block (``full_heads``: see :class:`LlamaKVCache`)."""
        return [LlamaKVCache(self.context_length, full_heads) for _ in self.blocks]

    def check_input(self, idx: Tensor, start: int = 0) -> None:
        """Reject what the model cannot read, in one line naming the problem (shape, dtype, length, ids)."""
        if not isinstance(idx, Tensor) or idx.dim() != 2:
            shape = shape_of(idx) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"Llama expects token ids of shape [batch, seq], got {shape}")
        if idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"Llama expects integer token ids, got dtype {idx.dtype}")
        if idx.shape[1] == 0:
            raise ValueError("Llama got an empty sequence: give it at least one token")
        if start + idx.shape[1] > self.context_length:
            have = f"{start} cached + {idx.shape[1]} new tokens are" if start else f"a sequence of {idx.shape[1]} tokens is"
            raise ValueError(f"{have} longer than the context window ({self.context_length})")
        if int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(idx.min())}..{int(idx.max())}")

    def hidden_states(self, idx: Tensor, caches: Sequence[KVCache] | None = None) -> Tensor:
        """The final normalised hidden states ``[batch, seq, d_model]`` (see :meth:`forward`)."""
        start = 0
        if caches is not None:
            if len(caches) != len(self.blocks):
                raise ValueError(f"need one KV cache per block: {len(self.blocks)} blocks, {len(caches)} caches")
            start = len(caches[0])
        self.check_input(idx, start)
        x = self.token_embedding(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, start, None if caches is None else caches[i])
        return self.final_norm(x)

    def forward(self, idx: Tensor, caches: Sequence[KVCache] | None = None) -> Tensor:
        return self.lm_head(self.hidden_states(idx, caches))

    # -- weights --------------------------------------------------------------------------------

    def load_hf_state_dict(self, state: Mapping[str, Tensor]) -> Llama:
        """Load a Hugging Face ``LlamaForCausalLM`` state dict through :func:`llama_plan` (in place; returns
        the model). A tensor that does not fit raises :class:`course.weights.WeightMismatchError` naming it."""
        tied = ("lm_head.weight",) if self.config.tie_weights else ()   # the same tensor as the embedding
        return load_plan(self, state, llama_plan(self.config), ignore_unused=("rotary_emb.inv_freq", *tied))

    @classmethod
    def unfilled(cls, config: LlamaConfig) -> Llama:
        """A model whose parameters hold whatever memory held (no time spent on a random initialisation), for
        :meth:`load_hf_state_dict` to fill: its plan fills every parameter or names the first it cannot."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        for block in model.blocks:                                   # buffers are not in a checkpoint: recompute
            attn = block.self_attn
            attn.omega = float32_frequencies(attn.d_head, attn.rope_base)
        if config.tie_weights:
            model.lm_head.weight = model.token_embedding.weight
        return model

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> Llama:
        """A :class:`Llama` holding the weights of a ``transformers.LlamaForCausalLM`` (eval mode)."""
        model = cls.unfilled(LlamaConfig.from_hf(hf_model.config))
        return model.load_hf_state_dict(hf_model.state_dict()).eval()


def llama_plan(config: LlamaConfig) -> list[Step]:
    """How each of our parameters comes from a Hugging Face Llama checkpoint (names as in
    ``LlamaForCausalLM.state_dict()``; the tensors need no transform, only new names)."""
    plan = [Step("token_embedding.weight", "model.embed_tokens.weight")]
    for i in range(config.num_layers):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        plan += [Step(f"{b}.attn_norm.weight", f"{h}.input_layernorm.weight"),
                 Step(f"{b}.self_attn.q_proj.weight", f"{h}.self_attn.q_proj.weight"),
                 Step(f"{b}.self_attn.k_proj.weight", f"{h}.self_attn.k_proj.weight",
                      note=f"{config.num_kv_heads} key/value heads of {config.d_head}"),
                 Step(f"{b}.self_attn.v_proj.weight", f"{h}.self_attn.v_proj.weight"),
                 Step(f"{b}.self_attn.out_proj.weight", f"{h}.self_attn.o_proj.weight"),
                 Step(f"{b}.ffn_norm.weight", f"{h}.post_attention_layernorm.weight"),
                 Step(f"{b}.ffn.gate.weight", f"{h}.mlp.gate_proj.weight"),
                 Step(f"{b}.ffn.linear1.weight", f"{h}.mlp.up_proj.weight"),
                 Step(f"{b}.ffn.linear2.weight", f"{h}.mlp.down_proj.weight")]
    plan.append(Step("final_norm.weight", "model.norm.weight"))
    if not config.tie_weights:
        plan.append(Step("lm_head.weight", "lm_head.weight"))
    return plan


# ---------------------------------------------------------------------------------------------
# Generation with a KV cache
# ---------------------------------------------------------------------------------------------

def prompt_length_problem(n_prompt: int, max_new_tokens: int, context_length: int) -> str:
    """``""`` if a prompt of ``n_prompt`` tokens plus ``max_new_tokens`` fit the context window, else one line."""
    if n_prompt == 0:
        return "the prompt is empty (0 tokens): give the model at least one token to continue"
    if n_prompt > context_length:
        return (f"the prompt has {n_prompt:,} tokens, more than the context window of {context_length:,}: "
                f"shorten it (or keep its last {context_length:,} tokens)")
    if n_prompt + max_new_tokens > context_length:
        return (f"the prompt's {n_prompt:,} tokens plus {max_new_tokens:,} new ones exceed the context window of "
                f"{context_length:,}: ask for at most {context_length - n_prompt:,} new tokens")
    return ""


@torch.no_grad()
def generate(model: Llama, idx: Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             stop_ids: Sequence[int] = (), use_cache: bool = True) -> Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx [batch, seq]`` and return ``[batch, seq + new]``.

    With ``use_cache`` the prompt is read once (prefill) and each later step feeds one token through the
    blocks' KV caches; without it every step reruns the whole sequence. ``temperature == 0`` is greedy
    (the default); otherwise :func:`course.generate.sample_next` samples (``top_k``, ``top_p``,
    ``generator``). Generation stops early once every row has produced one of ``stop_ids`` (rows that
    stopped are padded with their stop token). An empty prompt, or one that with ``max_new_tokens`` does
    not fit the context window, raises ``ValueError`` in one line before the model runs.
    """
    problem = validate_sampling(temperature, top_k, top_p, max_new_tokens)
    if problem:
        raise ValueError(problem)
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point():
        got = f"{shape_of(idx)} {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"generate expects integer token ids of shape [batch, seq], got {got}")
    problem = prompt_length_problem(idx.shape[1], max_new_tokens, model.context_length)
    if problem:
        raise ValueError(problem)
    idx = idx.to(model_device(model))
    stops = torch.tensor(list(stop_ids), dtype=idx.dtype, device=idx.device)
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    with eval_mode(model):
        caches = model.new_caches() if use_cache else None
        logits = model(idx, caches)[:, -1]                                   # prefill: [batch, vocab]
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # [batch]
            if stops.numel():
                nxt = torch.where(done, idx[:, -1], nxt)
                done = done | torch.isin(nxt, stops)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            logits = (model(nxt[:, None], caches) if use_cache else model(idx))[:, -1]
    return idx


def describe(model: Llama) -> str:
    """One line: the model's size and shape."""
    c = model.config
    return (f"{count_parameters(model) / 1e6:.1f}M parameters: {c.num_layers} layers, d_model {c.d_model}, {c.num_heads} query heads "
            f"sharing {c.num_kv_heads} key/value heads of size {c.d_head}, SwiGLU d_ff {c.d_ff}, vocabulary {c.vocab_size:,}, "
            f"context {c.context_length:,}, RoPE base {c.rope_base:g}")

