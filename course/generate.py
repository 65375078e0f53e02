"""Sampling text from a language model: greedy, temperature, top-k and top-p (nucleus).

A language model gives, for the last position, one score (logit) per vocabulary entry. Choosing
the next token from them is a separate, small decision, made in four steps here, in this order
(the same order as Hugging Face's ``generate``):

1. ``temperature``: divide the logits by ``t`` (``t < 1`` sharpens, ``t > 1`` flattens; ``t = 0``
   is defined as greedy, the limit of ``t -> 0``).
2. ``top_k``: keep the ``k`` highest logits, set the rest to ``-inf``.
3. ``top_p``: keep the smallest set of most likely tokens whose probability reaches ``p``.
4. sample from ``softmax`` of what is left (or take the ``argmax`` when greedy).

Every filter takes and returns logits ``[..., vocab]`` (removed tokens become ``-inf``), never
probabilities, so they compose. :func:`generate` runs the loop on token ids; :func:`generate_text`
adds a tokenizer and checks the prompt; :func:`sampling_widget` puts it all under sliders.

This version recomputes the whole context at every step (simple and obviously right); lesson 11
adds the KV cache that avoids it.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from course.device import model_device
from course.tokenizers import Tokenizer
from course.utils import describe_exception, eval_mode, first_line
from course.viz import Explorer, slider

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "sample_next",
    "validate_sampling",
    "generate",
    "prompt_problem",
    "generate_text",
    "SamplingWidget",
    "sampling_widget",
]

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Argument checks (one place, so every entry point says the same thing)
# ----------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def temperature_problem(temperature: Any) -> str:
    """``""`` if ``temperature`` is usable (a finite number >= 0), else a one-line message."""
    if not _is_number(temperature) or math.isnan(temperature) or math.isinf(temperature):
        return f"temperature must be a finite number >= 0, got {temperature!r}"
    if temperature < 0:
        return (f"temperature must be >= 0, got {temperature}: a negative temperature would turn the "
                "ranking upside down (the least likely token would become the most likely)")
    return ""


def top_k_problem(top_k: Any) -> str:
    """``""`` if ``top_k`` is ``None`` (off) or an integer >= 1, else a one-line message."""
    if top_k is None:
        return ""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        return f"top_k must be None (off) or an integer >= 1, got {top_k!r}"
    return ""


def top_p_problem(top_p: Any) -> str:
    """``""`` if ``top_p`` is ``None`` (off) or in ``(0, 1]``, else a one-line message."""
    if top_p is None:
        return ""
    if not _is_number(top_p) or math.isnan(top_p) or not 0.0 < top_p <= 1.0:
        return (f"top_p must be None (off) or in (0, 1], got {top_p!r}: it is the probability mass "
                "to keep (1 keeps every token)")
    return ""


def validate_sampling(temperature: Any = 1.0, top_k: Any = None, top_p: Any = None,
                      max_new_tokens: Any = 1) -> str:
    """All sampling arguments at once: ``""`` if usable, else the first problem in one line."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        return f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}"
    return temperature_problem(temperature) or top_k_problem(top_k) or top_p_problem(top_p)


def _raise_if(problem: str) -> None:
    if problem:
        raise ValueError(problem)


def _check_logits(logits: Tensor, name: str) -> None:
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{name} expects floating-point logits of shape [..., vocab], got {got}")
    if logits.shape[-1] == 0:
        raise ValueError(f"{name} got an empty vocabulary dimension: logits of shape {tuple(logits.shape)}")


# ----------------------------------------------------------------------------------------------
# The three filters
# ----------------------------------------------------------------------------------------------
def apply_temperature(logits: Tensor, t: float) -> Tensor:
    """Divide the logits by the temperature ``t > 0``: ``[..., vocab] -> [..., vocab]``.

    ``softmax(logits / t)``: ``t < 1`` makes the distribution peakier, ``t > 1`` flatter, ``t = 1``
    leaves it unchanged. ``t = 0`` would divide by zero; it is *defined* as greedy decoding, which
    :func:`sample_next` and :func:`generate` do. Here it raises ``ValueError`` saying so, as does a
    negative ``t``.
    """
    _check_logits(logits, "apply_temperature")
    _raise_if(temperature_problem(t))
    if t == 0:
        raise ValueError("temperature 0 cannot be applied as a division: it means greedy decoding "
                         "(take the argmax); sample_next and generate treat it that way")
    return logits / t


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row; set the others to ``-inf``.

    ``logits: [..., vocab] -> [..., vocab]`` (a new tensor; the input is not changed).
    Ties: every logit equal to the k-th largest is kept too (as Hugging Face and nanoGPT do), so a
    row with ties at the boundary can keep more than ``k``. ``k >= vocab`` keeps everything.
    ``k < 1`` raises ``ValueError``.
    """
    _check_logits(logits, "top_k_filter")
    _raise_if(top_k_problem(k) if k is not None else "top_k_filter needs k, got None")
    if k >= logits.shape[-1]:
        return logits.clone()
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth_largest, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``p``.

    ``logits: [..., vocab] -> [..., vocab]``, removed tokens set to ``-inf``. Tokens are sorted by
    probability, largest first; a token is kept when the probability of the tokens *before* it is
    still below ``p``. So the token whose probability carries the running total across ``p`` is kept,
    and the most likely token is always kept (even when its probability alone exceeds ``p``).
    ``p = 1`` keeps every token. ``p`` outside ``(0, 1]`` raises ``ValueError``.
    """
    _check_logits(logits, "top_p_filter")
    _raise_if(top_p_problem(p) if p is not None else "top_p_filter needs p, got None")
    if p >= 1.0:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)     # [..., vocab] each
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs                            # mass of the tokens ahead
    remove_sorted = before >= p                                             # the top token: before = 0 < p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # back to vocab order
    return logits.masked_fill(remove, NEG_INF)


# ----------------------------------------------------------------------------------------------
# One step, and the loop
# ----------------------------------------------------------------------------------------------
def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                greedy: bool = False) -> Tensor:
    """Choose one token per row: ``logits [..., vocab] -> long [...]``.

    Greedy (``greedy=True`` or ``temperature == 0``): the argmax, no randomness. Otherwise
    temperature, then top-k, then top-p, then a draw from the softmax using ``generator`` (pass a
    seeded ``torch.Generator`` for reproducible samples). A generator on another device than the
    logits (a CPU generator for a model on a GPU) draws on its own device: the same seed then gives
    the same draws wherever the model runs, up to the model's own rounding.
    """
    _check_logits(logits, "sample_next")
    _raise_if(validate_sampling(temperature, top_k, top_p))
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if generator is not None and generator.device != flat.device:
        choice = torch.multinomial(flat.to(generator.device), 1, generator=generator).to(flat.device)
    else:
        choice = torch.multinomial(flat, 1, generator=generator)           # [rows, 1]
    return choice.reshape(probs.shape[:-1])


def context_length_of(model: nn.Module) -> int | None:
    """The longest input ``model`` accepts (``model.context_length`` or ``model.config.context_length``
    / ``n_positions``), or ``None`` if it does not say."""
    for owner in (model, getattr(model, "config", None)):
        for name in ("context_length", "n_positions"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                return value
    return None


def _logits_of(model: nn.Module, idx: Tensor) -> Tensor:
    out = model(idx)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def generate(model: nn.Module, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             generator: torch.Generator | None = None) -> Tensor:
    """Append ``max_new_tokens`` tokens to ``idx``, one at a time, and return the whole sequence.

    ``idx``: long ``[batch, seq]`` (or ``[seq]``, returned as ``[seq + max_new_tokens]``) ->
    ``[batch, seq + max_new_tokens]``. ``model(ids)`` must return logits ``[batch, seq, vocab]``
    (or an object with ``.logits``, as Hugging Face models do).

    Context window: the model only ever sees the **last** ``context_length`` tokens; a longer
    prompt, or one that grows past the window while generating, is cropped from the left (the
    returned sequence still holds everything).

    ``idx`` is moved to the model's device, and the result is returned there.

    Arguments: ``temperature == 0`` means greedy (documented, not an error); a negative temperature,
    ``top_k < 1`` or ``top_p`` outside ``(0, 1]`` raise ``ValueError`` with a message, before the
    model runs. An empty ``idx`` raises ``ValueError``: a GPT needs at least one token to condition on.
    The model is put in eval mode while generating and its mode restored after.
    """
    _raise_if(validate_sampling(temperature, top_k, top_p, max_new_tokens))
    if not isinstance(idx, Tensor) or idx.dim() not in (1, 2) or idx.is_floating_point():
        got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"generate expects integer token ids of shape [batch, seq] or [seq], got {got}")
    one_d = idx.dim() == 1
    idx = idx.unsqueeze(0) if one_d else idx
    idx = idx.to(model_device(model))
    if idx.shape[-1] == 0:
        raise ValueError("generate got an empty prompt (0 tokens): give at least one token to start from")
    window = context_length_of(model)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            context = idx if window is None else idx[:, -window:]
            logits = _logits_of(model, context)[:, -1, :]                      # [batch, vocab]
            nxt = sample_next(logits, temperature, top_k, top_p, generator, greedy=greedy)  # [batch]
            idx = torch.cat([idx, nxt.unsqueeze(-1).to(idx.dtype)], dim=-1)
    return idx[0] if one_d else idx


# ----------------------------------------------------------------------------------------------
# Text in, text out
# ----------------------------------------------------------------------------------------------
def _show(chars: Sequence[str], limit: int = 5) -> str:
    return ", ".join(repr(c) for c in chars[:limit]) + (" ..." if len(chars) > limit else "")


def prompt_problem(prompt: Any, tokenizer: Any) -> str:
    """``""`` if ``tokenizer`` can encode ``prompt``, else a one-line message.

    Rules: a non-empty string; for a character tokenizer (one with ``stoi``), every character in
    its vocabulary (the message names the unknown ones); otherwise ``tokenizer.encode`` must
    succeed and give at least one token.
    """
    if not isinstance(prompt, str):
        return f"the prompt must be a string, got {type(prompt).__name__}"
    if prompt == "":
        return ("the prompt is empty: type at least one character; a GPT predicts each token from "
                "the ones before it, so it needs something to start from")
    stoi = getattr(tokenizer, "stoi", None)
    if isinstance(stoi, dict) and not getattr(tokenizer, "unk", False):
        unknown = sorted(set(prompt) - stoi.keys())
        if unknown:
            return (f"{len(unknown)} character(s) in the prompt are not in the model's vocabulary: "
                    f"{_show(unknown)}; remove or replace them")
        return ""
    try:
        ids = tokenizer.encode(prompt)
    except Exception as exc:  # any tokenizer: one line, no traceback
        return f"the tokenizer cannot encode the prompt: {first_line(exc)}"
    if len(ids) == 0:
        return "the prompt gave no tokens: type something the tokenizer keeps"
    return ""


def generate_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  greedy: bool = False, generator: torch.Generator | None = None) -> str:
    """Encode ``prompt``, :func:`generate`, decode: returns the prompt followed by the new text.

    Bad input raises ``ValueError`` with a one-line message (see :func:`prompt_problem` and
    :func:`validate_sampling`): an empty prompt, characters outside the vocabulary (named),
    a negative temperature, ``top_k < 1``, ``top_p`` outside ``(0, 1]``. A prompt longer than the
    context window is allowed: the model reads only its last ``context_length`` tokens.
    ``tokenizer`` is any :class:`course.tokenizers.Tokenizer` (it needs ``encode`` and ``decode``).
    """
    _raise_if(prompt_problem(prompt, tokenizer) or validate_sampling(temperature, top_k, top_p, max_new_tokens))
    ids = torch.tensor([list(tokenizer.encode(prompt))], dtype=torch.long, device=model_device(model))
    out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   greedy=greedy, generator=generator)
    return prompt + tokenizer.decode(out[0, ids.shape[1]:].tolist())


# ----------------------------------------------------------------------------------------------
# The widget
# ----------------------------------------------------------------------------------------------
def widget_settings(prompt: Any, tokenizer: Any, temperature: float, top_k: int, top_p: float,
                    greedy: bool, max_new_tokens: int, context_length: int | None = None
                    ) -> tuple[dict, str, str]:
    """Turn widget values into :func:`generate_text` arguments.

    Returns ``(kwargs, problem, note)``: ``problem`` is ``""`` or the one-line reason nothing can be
    generated; ``note`` is an informative line (e.g. the prompt is longer than the window, so only its
    end is read). Widget conventions: ``top_k = 0`` and ``top_p = 1`` mean "off"; temperature 0 is greedy.
    """
    kwargs = dict(temperature=temperature, top_k=None if top_k == 0 else top_k,
                  top_p=None if top_p == 1 else top_p, greedy=bool(greedy), max_new_tokens=max_new_tokens)
    problem = prompt_problem(prompt, tokenizer) or validate_sampling(
        kwargs["temperature"], kwargs["top_k"], kwargs["top_p"], max_new_tokens)
    note = ""
    if not problem and context_length is not None:
        n = len(tokenizer.encode(prompt))
        if n > context_length:
            note = f"the prompt has {n} tokens; the model reads only the last {context_length}."
    return kwargs, problem, note


class SamplingWidget(Explorer):
    """Prompt, temperature, top-k, top-p, greedy, new tokens and seed controls, a Generate button,
    a one-line message and the generated text.

    Bad input never raises: it shows one red line (see :func:`widget_settings`) and greys the last text.
    Generating again with the very same settings and seed gives the very same text: the message says so
    ("same seed, same text: change the seed or the temperature"); every message counts the runs, so a click
    always shows that it ran. Attributes for tests and the curious: ``prompt``, ``temperature``, ``top_k``,
    ``top_p``, ``greedy``, ``new_tokens``, ``seed`` (the controls), ``message`` and ``output`` (HTML), ``text``
    (the same as ``output``), ``last`` (the last generated string or ``None``), ``runs``, ``widget``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, prompt: str = "def ", max_new_tokens: int = 120,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 generate_now: bool = True):
        import ipywidgets as widgets  # imported here so the rest of the module works without it

        self.model, self.tokenizer = model, tokenizer
        self.last: str | None = None
        self.runs = 0
        self._last_settings: tuple | None = None
        style = {"description_width": "130px"}
        self.prompt = widgets.Textarea(value=prompt, description="prompt", layout=widgets.Layout(width="95%"),
                                       style=style, rows=2)
        self.temperature = slider(temperature, 0.0, 2.0, 0.05, "temperature", px_per_step=8)
        vocab = max(1, getattr(tokenizer, "vocab_size", 100))
        self.top_k = slider(min(top_k, vocab), 0, vocab, 1, "top-k (0: off)", px_per_step=4)
        self.top_p = slider(top_p, 0.05, 1.0, 0.05, "top-p (1: off)", px_per_step=8)
        self.greedy = widgets.Checkbox(value=False, description="greedy (argmax)", style=style)
        self.new_tokens = slider(max_new_tokens, 1, 400, 1, "new tokens", px_per_step=2)
        self.seed = widgets.IntText(value=seed, description="seed", style=style)
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.button.on_click(lambda _: self.update())
        self._build("set a prompt and the sampling controls, then press Generate to see what the model writes "
                    "(prompt in bold)", [self.prompt, self.temperature, self.top_k, self.top_p, self.greedy,
                                         self.new_tokens, self.seed, self.button], picture=False, text=True)
        self.text = self.output
        if generate_now:
            self.update()

    def update(self) -> bool:
        """Validate the controls and generate. Returns True if text was generated."""
        kwargs, problem, note = widget_settings(
            self.prompt.value, self.tokenizer, self.temperature.value, self.top_k.value, self.top_p.value,
            self.greedy.value, self.new_tokens.value, context_length_of(self.model))
        if problem:
            self.refuse(problem)
            return False
        generator = torch.Generator().manual_seed(int(self.seed.value))    # draws on the CPU, wherever the model runs
        try:
            out = generate_text(self.model, self.tokenizer, self.prompt.value, generator=generator, **kwargs)
        except Exception as exc:  # a last guard: one line, never a traceback in the widget
            self.refuse(f"generation failed: {describe_exception(exc)}")
            return False
        settings = (self.prompt.value, int(self.seed.value), tuple(sorted(kwargs.items())))
        same = settings == self._last_settings
        self._last_settings = settings
        self.runs += 1
        self.last = out
        prompt = self.prompt.value
        greedy = kwargs["greedy"] or kwargs["temperature"] == 0
        mode = "greedy" if greedy else (
            f"temperature {kwargs['temperature']:g}, top-k {kwargs['top_k'] or 'off'}, top-p {kwargs['top_p'] or 'off'}")
        line = f"Run {self.runs}: {kwargs['max_new_tokens']} new tokens, {mode}."
        if same:
            line += (" Same settings, same text: greedy decoding has no randomness; change the prompt." if greedy else
                     " Same seed, same text: change the seed or the temperature to draw another sample.")
        self.ok(line + (f" Note: {note}" if note else ""))
        self.show_text(f'<pre style="white-space: pre-wrap"><b>{html.escape(prompt)}</b>'
                       f"{html.escape(out[len(prompt):])}</pre>")
        return True


def sampling_widget(model: nn.Module, tokenizer: Any, prompt: str = "def ", **kw) -> SamplingWidget:
    """Build a :class:`SamplingWidget` (show it by ending a cell with it, or ``display(...)``)."""
    return SamplingWidget(model, tokenizer, prompt=prompt, **kw)
