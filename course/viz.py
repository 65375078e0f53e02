"""Pictures and widgets for attention: heatmaps, and an explorer where the learner types a sentence.

The explorer needs no JavaScript beyond ipywidgets (no CDN, no require.js), so it works offline in
JupyterLab, VS Code and Colab. Its input checks live in :func:`validate_sentence`, a pure function
the tests cover: bad input becomes a one-line message in the widget, never a traceback.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable, Collection, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .plotting import use_course_style

__all__ = [
    "ALLOWED_PUNCTUATION",
    "tokenize_words",
    "validate_sentence",
    "attention_heatmap",
    "attention_heads",
    "AttentionExplorer",
    "attention_explorer",
]

ALLOWED_PUNCTUATION = ".,!?'-"
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[.,!?]")
_ALLOWED_CHAR = re.compile(r"[A-Za-z0-9\s" + re.escape(ALLOWED_PUNCTUATION) + r"]")


def tokenize_words(text: str) -> list[str]:
    """Split a sentence into words and punctuation marks: "didn't cross." -> ["didn't", "cross", "."]."""
    return _TOKEN.findall(text)


def validate_sentence(text: str, max_tokens: int, vocab: Collection[str] | None = None) -> tuple[list[str], str]:
    """Check what a learner typed; return (tokens, "") if usable, else ([], a one-line message).

    Rules: not empty; only letters, digits, spaces and ``.,!?'-``; at most ``max_tokens`` tokens;
    and, when ``vocab`` is given, every token (lower-cased) in it.
    """
    if not isinstance(text, str) or not text.strip():
        return [], "Type a sentence: the box is empty."
    bad = sorted({c for c in text if not _ALLOWED_CHAR.fullmatch(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return [], f"Unknown character(s) {shown}: use letters, digits, spaces and {ALLOWED_PUNCTUATION}"
    tokens = tokenize_words(text)
    if not tokens:
        return [], "No words found: type at least one word."
    if len(tokens) > max_tokens:
        return [], f"Too long: {len(tokens)} tokens, the limit is {max_tokens}. Shorten the sentence."
    if vocab is not None:
        known = {w.lower() for w in vocab}
        unknown = [t for t in dict.fromkeys(tokens) if t.lower() not in known]
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            words = sorted(w for w in known if w[:1].isalnum())  # words first, punctuation is obvious
            examples = ", ".join(words[:12]) + (f" ... ({len(known)} in all)" if len(words) > 12 else "")
            return [], f"Unknown word(s) {shown}; this model knows only: {examples}"
    return tokens, ""


def _to_numpy(weights) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        return weights.detach().float().cpu().numpy()
    return np.asarray(weights, dtype=float)


def attention_heatmap(weights, tokens: Sequence[str], ax=None, *, query_tokens: Sequence[str] | None = None,
                      title: str = "", annotate: bool | None = None, colorbar: bool = True, vmax: float | None = 1.0):
    """Draw attention weights [seq_q, seq_k] as a heatmap: rows = queries (who looks), columns = keys.

    ``tokens`` label the keys and, unless ``query_tokens`` is given, the queries too. Values are
    written in the cells when the map is small (``annotate=None`` decides). Returns the axes.
    """
    w = _to_numpy(weights)
    query_tokens = list(tokens) if query_tokens is None else list(query_tokens)
    if w.ndim != 2:
        raise ValueError(f"attention_heatmap needs weights [seq_q, seq_k], got shape {w.shape}; pick one head/example")
    if w.shape != (len(query_tokens), len(tokens)):
        raise ValueError(f"weights of shape {w.shape} do not match {len(query_tokens)} query tokens x "
                         f"{len(tokens)} key tokens")
    use_course_style()
    if ax is None:
        size = min(7.0, 1.6 + 0.42 * max(w.shape))
        _, ax = plt.subplots(figsize=(size * 1.1, size))
    im = ax.imshow(w, vmin=0.0, vmax=vmax, cmap="Blues", aspect="equal")
    ax.grid(False)
    ax.set_xticks(range(len(tokens)), labels=list(tokens), rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(query_tokens)), labels=query_tokens)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = max(w.shape) <= 12
    if annotate:
        top = vmax if vmax is not None else float(w.max() or 1.0)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}".lstrip("0") if w[i, j] < 1 else "1", ha="center", va="center",
                        fontsize=7, color="white" if w[i, j] > 0.6 * top else "black")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_heads(weights, tokens: Sequence[str], titles: Sequence[str] | None = None, *,
                    query_tokens: Sequence[str] | None = None, annotate: bool = False, size: float = 3.2):
    """Several heads side by side: weights [heads, seq_q, seq_k]. Returns the figure."""
    w = _to_numpy(weights)
    if w.ndim != 3:
        raise ValueError(f"attention_heads needs weights [heads, seq_q, seq_k], got shape {w.shape}")
    heads = w.shape[0]
    titles = [f"head {h}" for h in range(heads)] if titles is None else list(titles)
    if len(titles) != heads:
        raise ValueError(f"{len(titles)} titles for {heads} heads")
    use_course_style()
    fig, axes = plt.subplots(1, heads, figsize=(size * heads, size), squeeze=False)
    for h, ax in enumerate(axes[0]):
        attention_heatmap(w[h], tokens, ax=ax, query_tokens=query_tokens, title=titles[h],
                          annotate=annotate, colorbar=False)
        if h:
            ax.set_ylabel("")
    fig.tight_layout()
    return fig


class AttentionExplorer:
    """A text box, a one-line message and a heatmap that redraws when the sentence changes.

    ``attend_fn(tokens) -> weights`` [seq, seq] (or [heads, seq, seq]: heads are drawn side by side).
    Attributes the tests (and curious learners) use: ``text`` (the ipywidgets.Text), ``message``
    (an ipywidgets.HTML line), ``image`` (an ipywidgets.Image holding the heatmap as PNG), ``tokens`` and ``weights`` (last
    successful drawing), ``widget`` (the whole VBox; displaying the explorer displays it).
    """

    def __init__(self, attend_fn: Callable[[list[str]], torch.Tensor], sentence: str = "",
                 max_tokens: int = 16, vocab: Collection[str] | None = None,
                 head_titles: Sequence[str] | None = None, description: str = "Sentence:", dpi: int = 80):
        import ipywidgets as widgets  # imported here so the rest of the module works without it

        self.attend_fn, self.max_tokens, self.vocab = attend_fn, max_tokens, vocab
        self.head_titles, self.dpi = head_titles, dpi
        self.tokens: list[str] = []
        self.weights: np.ndarray | None = None
        self.text = widgets.Text(value=sentence, description=description, continuous_update=False,
                                 layout=widgets.Layout(width="95%"))
        self.message = widgets.HTML(value="")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.widget = widgets.VBox([self.text, self.message, self.image])
        self.text.observe(lambda change: self.update(change["new"]), names="value")
        self.update(sentence)

    def _say(self, line: str, ok: bool) -> None:
        import html
        colour = "#2a7a2a" if ok else "#b00020"
        self.message.value = f'<span style="color:{colour}">{html.escape(line)}</span>'

    def update(self, text: str) -> bool:
        """Validate ``text``, run attend_fn, redraw. Returns True if a heatmap was drawn."""
        tokens, problem = validate_sentence(text, self.max_tokens, self.vocab)
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            weights = _to_numpy(self.attend_fn(tokens))
        except Exception as exc:  # the learner's attend_fn may raise anything: one line, no traceback
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self._say(f"attend_fn raised {type(exc).__name__}: {first}", ok=False)
            return False
        n = len(tokens)
        if weights.shape[-2:] != (n, n) or weights.ndim not in (2, 3):
            self._say(f"attend_fn returned shape {weights.shape}; expected ({n}, {n}) or (heads, {n}, {n})", ok=False)
            return False
        self.tokens, self.weights = tokens, weights
        self.image.value = self._render(weights, tokens)
        self._say(f"{n} tokens. Each row shows where that word looks; each row sums to 1.", ok=True)
        return True

    def _render(self, weights: np.ndarray, tokens: list[str]) -> bytes:
        """The heatmap as PNG bytes (an Image widget shows them the same way in every front end)."""
        if weights.ndim == 2:
            fig = attention_heatmap(weights, tokens).figure
        else:
            fig = attention_heads(weights, tokens, titles=self.head_titles)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        plt.close(fig)
        return buffer.getvalue()

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)


def attention_explorer(attend_fn: Callable[[list[str]], torch.Tensor], sentence: str = "",
                       max_tokens: int = 16, vocab: Collection[str] | None = None,
                       head_titles: Sequence[str] | None = None) -> AttentionExplorer:
    """Build an :class:`AttentionExplorer` (show it by ending a cell with it, or ``display(...)``)."""
    return AttentionExplorer(attend_fn, sentence=sentence, max_tokens=max_tokens, vocab=vocab, head_titles=head_titles)
