"""Pictures and widgets: heatmaps, tables of heads, bertviz adapters, and the one style every course widget
shares (:class:`Explorer`).

Every widget of the course is an :class:`Explorer`: its controls, a one-line message (green when the input
was used, red when it was refused), a picture of fixed place that keeps its size and is greyed when the input
was refused (so a stale picture never passes for a new one), an optional text area, and a static form for
viewers without a kernel (GitHub, a notebook opened before running it): one line saying what the widget does
and to run the cell, and the picture of its state when the cell ran. The explorers need no JavaScript beyond
ipywidgets (no CDN, no require.js), so they work offline in JupyterLab, VS Code and Colab. Input checks are
pure functions the tests cover (:func:`validate_sentence`, ...): bad input becomes a one-line message in the
widget, never a traceback.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from .data.sentences import tokenize_words
from .plotting import use_course_style
from .utils import describe_exception, eval_mode

__all__ = [
    "Explorer",
    "FunctionExplorer",
    "explore",
    "slider",
    "set_range",
    "png_size",
    "STALE_CLASS",
    "figure_png",
    "heads_explorer",
    "tokenizer_explorer",
    "encoding_explorer",
    "head_contributions",
    "most_common_offset",
    "HeadExplorer",
    "head_explorer",
    "translation_explorer",
    "memory_explorer",
    "ALLOWED_PUNCTUATION",
    "tokenize_words",
    "validate_sentence",
    "attention_heatmap",
    "attention_heads",
    "AttentionExplorer",
    "attention_explorer",
    "attention_rollout",
    "draw_head_table",
    "VIEWS",
    "MEAN_OF_HEADS",
    "ALL_ROWS",
    "validate_choice",
    "ModelExplorer",
    "model_explorer",
    "BERTVIZ_OFFLINE_MESSAGE",
    "patient_bertviz_html",
    "show_bertviz",
    "to_bertviz",
    "gpt_attentions",
    "cross_attentions_for_bertviz",
]

ALLOWED_PUNCTUATION = ".,!?'-"
_ALLOWED_CHAR = re.compile(r"[A-Za-z0-9\s" + re.escape(ALLOWED_PUNCTUATION) + r"]")


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


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes, and the figure closed: what the explorers put in their Image widgets
    (an Image widget shows the same pixels in every front end)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# One style for every widget of the course
# ----------------------------------------------------------------------------------------------

STALE_CLASS = "course-stale"  # the CSS class of a picture or text kept from the last accepted input
_STYLE = (f"<style>.course-explorer .{STALE_CLASS} {{opacity: 0.3; filter: grayscale(100%);}}"
          ".course-explorer .course-explorer-message {min-height: 1.6em;}</style>")
_OK, _ERROR = "#2a7a2a", "#b00020"
DESCRIPTION_PX = 130  # the width of every control's label, so that the controls line up
MAX_TRACK_PX = 880    # a slider's track at most this wide (fits JupyterLab at 1280 px with the side bar)


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels of PNG bytes, read from the header (no decoding)."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not PNG bytes")
    return struct.unpack(">II", png[16:24])


def slider(value: float, min: float, max: float, step: float = 1, description: str = "", *,
           px_per_step: float = 4, continuous_update: bool = False, readout_format: str | None = None,
           log: bool = False):
    """An ``IntSlider`` (or ``FloatSlider`` when any argument is a float) whose track is wide enough for
    ``px_per_step`` pixels per step, between 200 and :data:`MAX_TRACK_PX` pixels.

    ``log=True``: a ``FloatLogSlider`` from ``10**min`` to ``10**max`` in steps of ``step`` in the exponent
    (``value`` is the number itself). ``continuous_update=False``: the picture follows when the handle is
    let go (or an arrow key pressed), so a drag does not queue dozens of redraws.
    """
    import ipywidgets as widgets

    where = math.log10(value) if log and value > 0 else value
    if not min <= where <= max or step <= 0:
        raise ValueError(f"slider {description!r}: need min <= value <= max and step > 0, got "
                         f"{min}, {where}, {max}, step {step}")
    steps = (max - min) / step
    track = int(np.clip(steps * px_per_step, 200, MAX_TRACK_PX))
    is_float = any(isinstance(v, float) for v in (value, min, max, step))
    kind = widgets.FloatLogSlider if log else widgets.FloatSlider if is_float else widgets.IntSlider
    extra = {"readout_format": readout_format} if readout_format else {}
    made = kind(value=value, min=min, max=max, step=step, description=description,
                continuous_update=continuous_update, style={"description_width": f"{DESCRIPTION_PX}px"},
                layout=widgets.Layout(width=f"{track + DESCRIPTION_PX + 70}px", max_width="100%"), **extra)
    made.add_class("course-slider")
    return made


def set_range(control, min: float, max: float) -> None:
    """Give a slider a new range (its value is clipped into it), in an order ipywidgets accepts."""
    if min > max:
        raise ValueError(f"empty range: min {min} > max {max}")
    if min > control.max:
        control.max = max
        control.min = min
    else:
        control.min = min
        control.max = max


def _message_html(line: str, ok: bool) -> str:
    return f'<span style="color:{_OK if ok else _ERROR}">{html.escape(line)}</span>'


class Explorer:
    """What every course widget shares. A subclass builds its controls, then calls :meth:`_build`, and
    reports with :meth:`show_picture` / :meth:`show_text` and :meth:`ok` / :meth:`refuse`.

    - ``message``: one line, green (``ok``) or red (``refuse``); it has a fixed height, so the layout does not
      move when it appears.
    - ``image``: the picture (PNG), shown at its natural size (one image pixel, one screen pixel: never
      stretched) in an area that only grows, so a smaller picture or a refusal does not make the page jump.
    - ``output``: an HTML text area (generated text, a tokenisation, ...).
    - When input is refused, the picture and the text stay but are greyed (CSS class :data:`STALE_CLASS`,
      ``stale`` is True) until an input is accepted again.
    - The static form (:meth:`_repr_mimebundle_`): besides the live widget, a displayed explorer carries
      ``text/plain`` and ``text/html`` saying what it does and to run the cell, with the picture (and text) of
      its state when the cell ran. JupyterLab shows that form until the cell is run (a notebook opened from disk
      is not trusted, and the widget view needs a kernel), and so do GitHub and nbviewer.

    Attributes the tests use: ``message``, ``image``, ``output``, ``widget``, ``stale``, ``picture`` (the PNG
    bytes of the last accepted input), ``about`` (the one-line description).
    """

    about = "an interactive widget"
    picture: bytes | None = None
    stale = False

    def _build(self, about: str, rows: Sequence, *, picture: bool = True, text: bool = False,
               after: Sequence = ()) -> None:
        """Lay out ``rows`` (controls, or boxes of them), the message, the text area and the picture area."""
        import ipywidgets as widgets

        self.about = about
        self.message = widgets.HTML(value="")
        self.message.add_class("course-explorer-message")
        self.output = widgets.HTML(value="") if text else None
        if self.output is not None:
            self.output.add_class("course-explorer-output")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto",
                                                                       align_self="flex-start"))
        self.image.add_class("course-explorer-image")
        self._area = widgets.Box([self.image], layout=widgets.Layout(min_height="0px", overflow="auto"))
        children = [widgets.HTML(_STYLE), *rows, self.message, *after]
        children += [self.output] if text else []
        children += [self._area] if picture else []
        self.widget = widgets.VBox(children)
        self.widget.add_class("course-explorer")
        self._tallest = 0

    # -- the message line -------------------------------------------------------------------------
    def ok(self, line: str) -> None:
        """A green line: the input was used; the picture and text are current."""
        self.message.value = _message_html(line, ok=True)
        self._mark_stale(False)

    def refuse(self, line: str) -> None:
        """A red line: the input was refused; what is shown stays, greyed, until an input is accepted."""
        self.message.value = _message_html(line, ok=False)
        self._mark_stale(self.picture is not None or bool(self.output is not None and self.output.value))

    def _say(self, line: str, ok: bool) -> None:
        (self.ok if ok else self.refuse)(line)

    @property
    def message_text(self) -> str:
        """The message line as plain text."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.message.value))

    def _mark_stale(self, stale: bool) -> None:
        self.stale = stale
        for part in (self.image, self.output):
            if part is None:
                continue
            if stale:
                part.add_class(STALE_CLASS)
            else:
                part.remove_class(STALE_CLASS)

    # -- the picture and the text -----------------------------------------------------------------
    def show_picture(self, picture, dpi: int = 100) -> None:
        """Show a matplotlib figure (closed afterwards) or PNG bytes at their natural size."""
        png = picture if isinstance(picture, bytes) else figure_png(picture, dpi)
        width, height = png_size(png)
        self.picture = png
        self.image.value = png
        self.image.layout.width = f"{width}px"
        if height > self._tallest:  # the area only grows: a smaller picture does not pull the page up
            self._tallest = height
            self._area.layout.min_height = f"{height + 4}px"

    def draw_unless(self, problem: str, render: Callable[[], Any]) -> bool:
        """Refuse with ``problem`` if there is one, else show what ``render()`` draws (a figure or PNG bytes);
        an exception while drawing is refused in one line. True if a picture was drawn."""
        if problem:
            self.refuse(problem)
            return False
        try:
            self.show_picture(render())
        except Exception as exc:
            self.refuse(f"Could not draw: {describe_exception(exc)}")
            return False
        return True

    def show_text(self, markup: str) -> None:
        """Put HTML (escape what the learner typed) into the text area."""
        if self.output is None:
            raise ValueError("this explorer has no text area")
        self.output.value = markup

    # -- the static form ----------------------------------------------------------------------------
    def static_text(self) -> str:
        """What a viewer without a kernel reads (``text/plain``)."""
        lines = [f"Interactive widget: {self.about}", "Run the cell to use it (it needs a running kernel)."]
        if self.message.value:
            lines.append(f"When the cell ran: {self.message_text}")
        return "\n".join(lines)

    def static_html(self) -> str:
        """What a viewer without a kernel sees (``text/html``): the same lines and the picture as it was."""
        parts = ['<div class="course-static" style="border-left:3px solid #3a6fb0;padding-left:8px">',
                 f"<p><b>Interactive widget:</b> {html.escape(self.about)}<br>"
                 "<i>Run the cell to use it (it needs a running kernel); below, its state when the cell ran.</i></p>"]
        if self.message.value:
            parts.append(f"<p>{self.message.value}</p>")
        if self.output is not None and self.output.value:
            parts.append(self.output.value)
        if self.picture is not None:
            width, _ = png_size(self.picture)
            data = base64.b64encode(self.picture).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(self.about)}">')
        parts.append("</div>")
        return "\n".join(parts)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.static_text()
        bundle["text/html"] = self.static_html()
        return bundle

    def snapshot(self):
        """The current picture as a still image (``IPython.display.Image``)."""
        from IPython.display import Image

        if self.picture is None:
            raise ValueError("nothing drawn yet")
        return Image(data=self.picture, format="png")


class FunctionExplorer(Explorer):
    """An explorer around one function of the controls' values (see :func:`explore`)."""

    def __init__(self, fn: Callable[..., Any], controls: Mapping[str, Any], about: str, *,
                 picture: bool = True, text: bool = True, rows: Sequence | None = None,
                 follow: Mapping[str, Callable[[dict], tuple[float, float]]] | None = None, button: str | None = None):
        import ipywidgets as widgets

        self.fn, self.controls, self.follow = fn, dict(controls), dict(follow or {})
        self.runs, self.seconds = 0, 0.0
        self.button = widgets.Button(description=button, button_style="primary") if button else None
        layout = list(rows) if rows is not None else list(self.controls.values())
        if self.button is not None:
            layout.append(self.button)
            self.button.on_click(lambda _: self.update())
        self._build(about, layout, picture=picture, text=text)
        self._busy = False
        if self.button is None:
            for control in self.controls.values():
                control.observe(lambda change: self._busy or self.update(), names="value")
        self.update()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> bool:
        """Call the function with the controls' values and show what it returns; True if it was shown.

        The function returns a line (str), a figure, or ``(line, figure_or_html)``; a ``ValueError`` it raises
        is the one-line message for refused input (any other exception is named in one line too).
        """
        self._busy = True  # ranges that follow other controls come first, without a redraw each
        try:
            for name, bounds in self.follow.items():
                try:
                    set_range(self.controls[name], *bounds(self.values()))
                except (ValueError, TypeError):
                    pass  # the other control holds bad input: the function below says so
        finally:
            self._busy = False
        started = time.perf_counter()
        try:
            result = self.fn(**self.values())
        except ValueError as exc:
            self.refuse(str(exc).splitlines()[0] if str(exc) else "ValueError")
            return False
        except Exception as exc:  # never a traceback in the widget
            self.refuse(f"Could not run: {describe_exception(exc)}")
            return False
        self.runs += 1
        self.seconds = time.perf_counter() - started
        line, shown = result if isinstance(result, tuple) else (result, None) if isinstance(result, str) else ("", result)
        if shown is not None and not isinstance(shown, str):
            self.show_picture(shown)
        elif isinstance(shown, str):
            self.show_text(shown)
        self.ok(line)
        return True


def explore(fn: Callable[..., Any], about: str, **controls) -> FunctionExplorer:
    """A widget from a function and its controls: ``explore(fn, "what it shows", n=slider(...), text=Text(...))``
    calls ``fn(n=..., text=...)`` at every change (see :meth:`FunctionExplorer.update` for what it may return)."""
    return FunctionExplorer(fn, controls, about)


def attention_heatmap(weights, tokens: Sequence[str], ax=None, *, query_tokens: Sequence[str] | None = None,
                      title: str = "", annotate: bool | None = None, colorbar: bool = True, vmax: float | None = 1.0):
    """Draw attention weights [seq_q, seq_k] as a heatmap: rows = queries (who looks), columns = keys.

    ``tokens`` label the keys and, unless ``query_tokens`` is given, the queries too. Values are
    written in the cells when the map is small (``annotate=None`` decides). The colour scale runs from 0 to
    ``vmax`` (``None``: the largest weight, so a pale map shows its structure; the colour bar says so).
    Returns the axes.
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
    vmax = vmax if vmax is not None else float(w.max()) or 1.0  # None: from 0 to the largest weight
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
        top = vmax
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}".lstrip("0") if w[i, j] < 1 else "1", ha="center", va="center",
                        fontsize=7, color="white" if w[i, j] > 0.6 * top else "black")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_heads(weights, tokens: Sequence[str], titles: Sequence[str] | None = None, *,
                    query_tokens: Sequence[str] | None = None, annotate: bool | None = None, size: float | None = None,
                    colorbar: bool = True, shared_scale: bool = True):
    """Several heads side by side: weights [heads, seq_q, seq_k]. Returns the figure.

    ``shared_scale``: every head on one scale, 0 to 1, with one colour bar (heads compare at a glance);
    otherwise each head runs from 0 to its own largest weight and has its own colour bar (a pale map becomes
    readable). ``annotate=None`` writes the values in the cells when there are at most 12 tokens.
    """
    w = _to_numpy(weights)
    if w.ndim != 3:
        raise ValueError(f"attention_heads needs weights [heads, seq_q, seq_k], got shape {w.shape}")
    heads = w.shape[0]
    titles = [f"head {h}" for h in range(heads)] if titles is None else list(titles)
    if len(titles) != heads:
        raise ValueError(f"{len(titles)} titles for {heads} heads")
    if annotate is None:
        annotate = max(w.shape[1:]) <= 12
    size = size if size is not None else min(4.6, 1.6 + 0.3 * max(w.shape[1:]))
    use_course_style()
    fig, axes = plt.subplots(1, heads, figsize=(size * heads + (0.6 if colorbar else 0), size), squeeze=False)
    for h, ax in enumerate(axes[0]):
        vmax = 1.0 if shared_scale else None
        attention_heatmap(w[h], tokens, ax=ax, query_tokens=query_tokens, title=titles[h], annotate=annotate,
                          colorbar=colorbar and not shared_scale, vmax=vmax)
        if h:
            ax.set_ylabel("")
    fig.tight_layout()
    if colorbar and shared_scale:
        fig.colorbar(axes[0, -1].images[0], ax=list(axes[0]), fraction=0.046 / heads, pad=0.02,
                     label="attention weight")
    return fig


class AttentionExplorer(Explorer):
    """A text box, a one-line message and a heatmap that redraws when the sentence changes.

    ``attend_fn(tokens) -> weights`` [seq, seq] (or [heads, seq, seq]: heads are drawn side by side, each with
    its colour bar). Attributes the tests (and curious learners) use: ``text`` (the ipywidgets.Text),
    ``message``, ``image`` (the heatmap as PNG), ``tokens`` and ``weights`` (last successful drawing),
    ``widget`` (the whole box; displaying the explorer displays it, with a static form for viewers
    without a kernel).
    """

    def __init__(self, attend_fn: Callable[[list[str]], torch.Tensor], sentence: str = "",
                 max_tokens: int = 16, vocab: Collection[str] | None = None,
                 head_titles: Sequence[str] | None = None, description: str = "Sentence:", dpi: int = 100):
        import ipywidgets as widgets  # imported here so the rest of the module works without it

        self.attend_fn, self.max_tokens, self.vocab = attend_fn, max_tokens, vocab
        self.head_titles, self.dpi = head_titles, dpi
        self.tokens: list[str] = []
        self.weights: np.ndarray | None = None
        self.text = widgets.Text(value=sentence, description=description, continuous_update=False,
                                 layout=widgets.Layout(width="95%"))
        self.text.add_class("course-explorer-text")
        self._build("type a sentence (press Enter) to see where each word looks: the attention weights as a "
                    "heatmap, one row per word", [self.text])
        self.text.observe(lambda change: self.update(change["new"]), names="value")
        self.update(sentence)

    def update(self, text: str) -> bool:
        """Validate ``text``, run attend_fn, redraw. Returns True if a heatmap was drawn."""
        tokens, problem = validate_sentence(text, self.max_tokens, self.vocab)
        if problem:
            self.refuse(problem)
            return False
        try:
            weights = _to_numpy(self.attend_fn(tokens))
        except Exception as exc:  # the learner's attend_fn may raise anything: one line, no traceback
            self.refuse(f"attend_fn raised {describe_exception(exc)}")
            return False
        n = len(tokens)
        if weights.shape[-2:] != (n, n) or weights.ndim not in (2, 3):
            self.refuse(f"attend_fn returned shape {weights.shape}; expected ({n}, {n}) or (heads, {n}, {n})")
            return False
        self.tokens, self.weights = tokens, weights
        self.show_picture(self._render(weights, tokens))
        self.ok(f"{n} tokens. Each row shows where that word looks; each row sums to 1. "
                f"Largest weight: {weights.max():.2f}.")
        return True

    def _render(self, weights: np.ndarray, tokens: list[str]) -> bytes:
        """The heatmap as PNG bytes (an Image widget shows them the same way in every front end)."""
        if weights.ndim == 2:
            fig = attention_heatmap(weights, tokens, vmax=None).figure
        else:
            fig = attention_heads(weights, tokens, titles=self.head_titles, annotate=None, colorbar=True,
                                  shared_scale=False)
        return figure_png(fig, self.dpi)


def attention_explorer(attend_fn: Callable[[list[str]], torch.Tensor], sentence: str = "",
                       max_tokens: int = 16, vocab: Collection[str] | None = None,
                       head_titles: Sequence[str] | None = None) -> AttentionExplorer:
    """Build an :class:`AttentionExplorer` (show it by ending a cell with it, or ``display(...)``)."""
    return AttentionExplorer(attend_fn, sentence=sentence, max_tokens=max_tokens, vocab=vocab, head_titles=head_titles)


# ----------------------------------------------------------------------------------------------
# Attention rollout (lesson 10)
# ----------------------------------------------------------------------------------------------

def attention_rollout(attentions, add_residual: bool = True, cumulative: bool = False) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output position draws on each input token
    once the layers are chained.

    ``attentions``: ``[layers, heads, seq, seq]`` (or a list of ``[heads, seq, seq]`` / ``[1, heads, seq, seq]``,
    one per layer, first layer first). Each layer's heads are averaged; with ``add_residual`` the residual
    connection is counted as attention to oneself, ``A' = (A + I) / 2`` (rows still sum to 1); the layers
    are then multiplied, later layers on the left: ``R = A'_L @ ... @ A'_1``.

    Returns ``R [seq, seq]`` (row ``i``: how much output ``i`` draws on each input token; rows sum to 1),
    or with ``cumulative=True`` the rollout after each layer, ``[layers, seq, seq]``.
    """
    if isinstance(attentions, (list, tuple)):
        if not attentions:
            raise ValueError("attention_rollout needs at least one layer")
        layers = [a.squeeze(0) if a.dim() == 4 and a.shape[0] == 1 else a for a in attentions]
        shapes = {tuple(a.shape) for a in layers}
        if len(shapes) != 1:
            raise ValueError(f"all layers must have the same shape [heads, seq, seq], got {sorted(shapes)}")
        attentions = torch.stack(layers)
    attentions = torch.as_tensor(attentions, dtype=torch.float32) if not isinstance(attentions, torch.Tensor) else attentions
    if attentions.dim() != 4 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attention_rollout needs [layers, heads, seq, seq], got shape {tuple(attentions.shape)}")
    per_layer = attentions.float().mean(1)  # [layers, seq, seq]
    eye = torch.eye(per_layer.shape[-1], dtype=per_layer.dtype, device=per_layer.device)
    if add_residual:
        per_layer = 0.5 * per_layer + 0.5 * eye
        per_layer = per_layer / per_layer.sum(-1, keepdim=True)
    rollout, steps = eye, []
    for a in per_layer:
        rollout = a @ rollout
        steps.append(rollout)
    return torch.stack(steps) if cumulative else rollout


# ----------------------------------------------------------------------------------------------
# A table of heads (lesson 10)
# ----------------------------------------------------------------------------------------------

def draw_head_table(ax, table: Tensor, title: str = "", vmin: float = 0.0, vmax: float = 1.0, cmap: str = "Blues",
                    fmt: str = "{:.2f}"):
    """A ``[layers, heads]`` table as an annotated heatmap (rows: layers, columns: heads). Returns the image."""
    values = table.detach().float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"table must be [layers, heads], got shape {values.shape}")
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(values.shape[1]), labels=[str(h) for h in range(values.shape[1])])
    ax.set_yticks(range(values.shape[0]), labels=[str(l) for l in range(values.shape[0])])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    if values.size <= 96:
        span = vmax - vmin
        for l in range(values.shape[0]):
            for h in range(values.shape[1]):
                v = values[l, h]
                dark = (v - vmin) / span > 0.65 if cmap == "Blues" else abs(v - (vmin + vmax) / 2) / span > 0.35
                ax.text(h, l, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return im


# ----------------------------------------------------------------------------------------------
# The lesson 10 explorer: a whole model, live
# ----------------------------------------------------------------------------------------------

VIEWS = ("one head", "all heads", "rollout")
MEAN_OF_HEADS = -1  # the head choice that averages a layer's heads
ALL_ROWS = -1  # the token choice that shows every row


def validate_choice(layer, head, token, num_layers: int, num_heads: int, num_tokens: int,
                    view: str = "one head") -> str:
    """'' if (layer, head, token, view) can be drawn, else a one-line message naming the valid range.

    ``head`` may be :data:`MEAN_OF_HEADS` (-1) and ``token`` :data:`ALL_ROWS` (-1).
    """
    def bad_int(x) -> bool:
        return isinstance(x, bool) or not isinstance(x, (int, np.integer))

    if view not in VIEWS:
        return f"Unknown view {view!r}: choose one of {', '.join(VIEWS)}."
    if bad_int(layer) or not 0 <= layer < num_layers:
        return f"Layer {layer!r} is out of range: this model has layers 0 to {num_layers - 1}."
    if bad_int(head) or not (head == MEAN_OF_HEADS or 0 <= head < num_heads):
        return f"Head {head!r} is out of range: this model has heads 0 to {num_heads - 1} (or -1, their mean)."
    if bad_int(token) or not (token == ALL_ROWS or 0 <= token < num_tokens):
        return f"Token {token!r} is out of range: the sentence has tokens 0 to {num_tokens - 1} (or -1, all rows)."
    return ""


def _row_bars(ax, row: np.ndarray, tokens: Sequence[str], title: str) -> None:
    """Where one token looks: a horizontal bar per key token."""
    y = np.arange(len(tokens))
    ax.barh(y, row, color="#3a6fb0")
    ax.set_yticks(y, labels=list(tokens))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("attention weight")
    ax.set_title(title)
    top = int(np.argmax(row))
    ax.get_yticklabels()[top].set_fontweight("bold")


def _mark_row(ax, i: int, n: int) -> None:
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((-0.5, i - 0.5), n, 1, fill=False, edgecolor="#d62728", linewidth=2))


class ModelExplorer(Explorer):
    """Explore a model's attention live: type a sentence, choose a layer, a head and a token.

    ``run_fn(words) -> (tokens, attentions)`` runs the model on the validated words and returns the
    tokens it saw (special tokens included) and every layer's weights ``[layers, heads, seq, seq]``.
    ``describe_fn(words) -> str`` (optional) adds one line, e.g. the model's answer.

    Views: one head (or the mean of a layer's heads), all heads as a grid (layers x heads), and attention
    rollout through the chosen layer. Picking a token (the row of buttons) draws where that token looks.
    Everything is drawn to PNG in an ``ipywidgets.Image``: no JavaScript beyond ipywidgets, so it works
    offline in JupyterLab, VS Code and Colab. Bad input (empty or too long text, unknown words, a layer,
    head or token out of range, an exception in ``run_fn``) leaves a one-line ``message`` and keeps the
    last picture; the widget keeps working. Attributes used by the tests: ``text``, ``view``, ``layer``,
    ``head``, ``token``, ``message``, ``answer``, ``image``, ``tokens``, ``attentions``, ``widget``.
    """

    def __init__(self, run_fn: Callable[[list[str]], tuple[Sequence[str], torch.Tensor]], sentence: str = "",
                 max_tokens: int = 16, vocab: Collection[str] | None = None,
                 describe_fn: Callable[[list[str]], str] | None = None, layer: int = 0, head: int = 0,
                 token: str | None = None, view: str = "one head", dpi: int = 80):
        import ipywidgets as widgets

        self.run_fn, self.describe_fn = run_fn, describe_fn
        self.max_tokens, self.vocab, self.dpi = max_tokens, vocab, dpi
        self.tokens: list[str] = []
        self.attentions: np.ndarray | None = None  # [layers, heads, seq, seq]
        self._busy = False
        self.text = widgets.Text(value=sentence, description="Sentence:", continuous_update=False,
                                 layout=widgets.Layout(width="95%"))
        self.view = widgets.ToggleButtons(options=list(VIEWS), value=view, description="View:")
        self.layer = widgets.Dropdown(options=[("layer 0", 0)], value=0, description="Layer:")
        self.head = widgets.Dropdown(options=[("head 0", 0), ("mean of heads", MEAN_OF_HEADS)], value=0,
                                     description="Head:")
        self.token = widgets.ToggleButtons(options=[("all rows", ALL_ROWS)], value=ALL_ROWS,
                                           description="Token:", style={"button_width": "auto"})
        self.answer = widgets.HTML(value="")
        self.text.add_class("course-explorer-text")
        self._build("type a sentence (press Enter), pick a layer, a head, a view and a token to see where the "
                    "model's attention goes, live", [self.text, widgets.HBox([self.layer, self.head]), self.view,
                                                     self.token], after=[self.answer])
        self.text.observe(lambda change: self.set_sentence(change["new"]), names="value")
        for control in (self.view, self.layer, self.head, self.token):
            control.observe(lambda change: self.redraw(), names="value")
        self._wanted = (layer, head, token)
        self.set_sentence(sentence)

    # -- the sentence ---------------------------------------------------------------------------
    def set_sentence(self, text: str) -> bool:
        """Validate ``text``, run the model, rebuild the token buttons and redraw. True if drawn."""
        words, problem = validate_sentence(text, self.max_tokens, self.vocab)
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            tokens, attentions = self.run_fn(words)
            attentions = _to_numpy(attentions)
            if attentions.ndim != 4 or attentions.shape[-2:] != (len(tokens), len(tokens)):
                raise ValueError(f"run_fn returned attentions of shape {attentions.shape}; expected "
                                 f"(layers, heads, {len(tokens)}, {len(tokens)})")
            answer = self.describe_fn(words) if self.describe_fn is not None else ""
        except Exception as exc:  # one line, never a traceback; the last picture stays
            self._say(f"The model could not run: {describe_exception(exc)}", ok=False)
            return False
        previous = self.tokens[self.token.value] if self.tokens and self.token.value != ALL_ROWS else None
        self.tokens, self.attentions = list(tokens), attentions
        self.answer.value = answer
        self._busy = True  # rebuild the controls without redrawing at every change
        try:
            num_layers, num_heads = attentions.shape[:2]
            self.layer.options = [(f"layer {i}", i) for i in range(num_layers)]
            self.head.options = [(f"head {h}", h) for h in range(num_heads)] + [("mean of heads", MEAN_OF_HEADS)]
            self.token.options = [("all rows", ALL_ROWS)] + [(f"{t}", i) for i, t in enumerate(self.tokens)]
            if self._wanted is not None:  # the choices given to the constructor, applied once
                layer, head, token = self._wanted
                self._wanted = None
                self.layer.value = min(max(layer, 0), num_layers - 1)
                self.head.value = head if head == MEAN_OF_HEADS or 0 <= head < num_heads else 0
                previous = token
            self.token.value = self.tokens.index(previous) if previous in self.tokens else ALL_ROWS
        finally:
            self._busy = False
        return self.redraw()

    # -- choices --------------------------------------------------------------------------------
    def select(self, layer=None, head=None, token=None, view=None) -> bool:
        """Choose what to draw from code; out-of-range choices give a one-line message (nothing changes).

        ``token`` may be an index or a token string (its first occurrence).
        """
        if self.attentions is None:
            self._say("Type a sentence first.", ok=False)
            return False
        if isinstance(token, str):
            if token not in self.tokens:
                self._say(f"Token {token!r} is not in the sentence: {' '.join(self.tokens)}", ok=False)
                return False
            token = self.tokens.index(token)
        new = (self.layer.value if layer is None else layer, self.head.value if head is None else head,
               self.token.value if token is None else token, self.view.value if view is None else view)
        problem = validate_choice(new[0], new[1], new[2], *self.attentions.shape[:2], len(self.tokens), view=new[3])
        if problem:
            self._say(problem, ok=False)
            return False
        self._busy = True
        try:
            self.layer.value, self.head.value, self.token.value, self.view.value = new
        finally:
            self._busy = False
        return self.redraw()

    # -- drawing --------------------------------------------------------------------------------
    def current(self) -> tuple[np.ndarray, str]:
        """The map being drawn ``[seq, seq]`` (for "all heads": the chosen head's map) and its title."""
        layer, head = self.layer.value, self.head.value
        if self.view.value == "rollout":
            rolled = attention_rollout(torch.as_tensor(self.attentions), cumulative=True)[layer]
            return rolled.numpy(), f"rollout through layer {layer}"
        if head == MEAN_OF_HEADS:
            return self.attentions[layer].mean(0), f"layer {layer}, mean of heads"
        return self.attentions[layer, head], f"layer {layer}, head {head}"

    def redraw(self) -> bool:
        """Draw the current choice; True if a picture was drawn."""
        if self._busy or self.attentions is None:
            return False
        problem = validate_choice(self.layer.value, self.head.value, self.token.value,
                                  *self.attentions.shape[:2], len(self.tokens), view=self.view.value)
        if not self.draw_unless(problem, self._render):
            return False
        plt.close("all")
        n, token = len(self.tokens), self.token.value
        if token == ALL_ROWS:
            self._say(f"{n} tokens. Each row shows where that token looks; pick a token to follow one row.", ok=True)
        else:
            weights, title = self.current()
            top = int(np.argmax(weights[token]))
            self._say(f"{title}: '{self.tokens[token]}' looks most at '{self.tokens[top]}' "
                      f"({weights[token, top]:.2f}).", ok=True)
        return True

    def figure(self):
        """The picture the widget shows now, as a matplotlib figure (a static copy: it reads without a kernel,
        on GitHub or in any notebook viewer). The widget draws with this very function."""
        if self.attentions is None:
            raise ValueError("nothing to draw yet: give the explorer a sentence first")
        use_course_style()
        tokens, token = self.tokens, self.token.value
        if self.view.value == "all heads":
            return self._grid()
        weights, title = self.current()
        size = min(6.0, 1.8 + 0.3 * len(tokens))
        if token == ALL_ROWS:
            fig, ax = plt.subplots(figsize=(size * 1.1, size))
            attention_heatmap(weights, tokens, ax=ax, title=title, annotate=False)
        else:
            fig, (ax, bars) = plt.subplots(1, 2, figsize=(size * 2.0, size), gridspec_kw={"width_ratios": [1.2, 1]})
            attention_heatmap(weights, tokens, ax=ax, title=title, annotate=False, colorbar=False)
            _mark_row(ax, token, len(tokens))
            _row_bars(bars, weights[token], tokens, f"where '{tokens[token]}' looks")
        fig.tight_layout()
        return fig

    def _render(self) -> bytes:
        fig = self.figure()
        return figure_png(fig, self.dpi)

    def _grid(self):
        """Every head of every layer; the chosen token's row is outlined; the chosen head is framed."""
        layers, heads = self.attentions.shape[:2]
        n, token = len(self.tokens), self.token.value
        labels = layers * heads <= 16 and n <= 16
        cell = 2.2 if labels else 1.1
        fig, axes = plt.subplots(layers, heads, figsize=(cell * heads + 0.5, cell * layers + 0.3), squeeze=False)
        for l in range(layers):
            for h in range(heads):
                ax = axes[l, h]
                ax.imshow(self.attentions[l, h], vmin=0, vmax=1, cmap="Blues")
                ax.grid(False)
                if labels and l == layers - 1:
                    ax.set_xticks(range(n), labels=self.tokens, rotation=90, fontsize=6)
                else:
                    ax.set_xticks([])
                if labels and h == 0:
                    ax.set_yticks(range(n), labels=self.tokens, fontsize=6)
                else:
                    ax.set_yticks([])
                ax.set_title(f"L{l} H{h}", fontsize=7)
                if token != ALL_ROWS:
                    _mark_row(ax, token, n)
                if l == self.layer.value and h == self.head.value:
                    for side in ax.spines.values():
                        side.set_visible(True)
                        side.set_edgecolor("#d62728")
                        side.set_linewidth(2.5)
        fig.tight_layout()
        return fig


def model_explorer(run_fn: Callable[[list[str]], tuple[Sequence[str], torch.Tensor]], sentence: str = "",
                   max_tokens: int = 16, vocab: Collection[str] | None = None,
                   describe_fn: Callable[[list[str]], str] | None = None, **kw) -> ModelExplorer:
    """Build a :class:`ModelExplorer` (end a cell with it to show it)."""
    return ModelExplorer(run_fn, sentence=sentence, max_tokens=max_tokens, vocab=vocab, describe_fn=describe_fn, **kw)


# --- bertviz in JupyterLab 4 and offline --------------------------------------------------------------
# bertviz's HTML loads require.js with <script src=...> and, right after it, an inline script that calls
# require.config(...). A browser runs a dynamically inserted <script src> asynchronously, so in JupyterLab
# the inline script runs first, fails with "require is not defined" and the first view of a session stays
# blank (later ones draw, once require.js has arrived). Offline, nothing ever arrives and the view is
# blank without a word. `patient_bertviz_html` makes the inline script wait for require.js and, when the
# scripts have not drawn anything after `wait_s`, write one line into the view saying why.

BERTVIZ_OFFLINE_MESSAGE = ("bertviz's JavaScript (require.js, d3 and jQuery from cdnjs.cloudflare.com) has not "
                           "loaded: offline, or blocked here? The course's own attention explorer "
                           "(course.viz.model_explorer, lesson 10) works without the internet.")
_BERTVIZ_ID = re.compile(r'id="(bertviz-[0-9a-f]{32})"')
_BERTVIZ_SCRIPT = re.compile(r'<script type="text/javascript">\n(.*)</script>\s*$', re.S)
_PATIENT_JS = """<script type="text/javascript">
(function () {
  var started = Date.now(), waitMs = %(wait_ms)d;
  function explain() {  // nothing drawn after waitMs: say why, in the view itself
    var root = document.getElementById(%(root)s);
    if (root && !root.querySelector("svg") && !root.querySelector(".course-bertviz-offline")) {
      var note = document.createElement("p");
      note.className = "course-bertviz-offline";
      note.style.cssText = "color:#a33;font-style:italic";
      note.textContent = %(message)s;
      root.insertBefore(note, root.firstChild);
    }
  }
  function start() {
    if (typeof window.require !== "function" || typeof window.require.config !== "function") {
      if (Date.now() - started > waitMs) { explain(); return; }
      setTimeout(start, 100);  // require.js is still loading
      return;
    }
    setTimeout(explain, Math.max(0, waitMs - (Date.now() - started)));  // d3 or jQuery may never come
%(body)s
  }
  start();
})();
</script>
"""


def patient_bertviz_html(html: str, wait_s: float = 20.0) -> str:
    """bertviz's HTML (``head_view``/``model_view`` with ``html_action="return"``) with its inline script
    made to wait for require.js, and a one-line explanation in the view when nothing has drawn after
    ``wait_s`` seconds. Raises ``ValueError`` if ``html`` is not a bertviz view."""
    found_id, found_script = _BERTVIZ_ID.search(html), _BERTVIZ_SCRIPT.search(html)
    if found_id is None or found_script is None:
        raise ValueError("not a bertviz view: expected a div id='bertviz-...' and one inline script at the end")
    patient = _PATIENT_JS % {"wait_ms": int(wait_s * 1000), "root": json.dumps(found_id.group(1)),
                             "message": json.dumps(BERTVIZ_OFFLINE_MESSAGE), "body": found_script.group(1)}
    return html[:found_script.start()] + patient


def show_bertviz(view: Callable, *args, wait_s: float = 20.0, **kwargs) -> None:
    """Display a bertviz view so that it draws on the first run in JupyterLab 4 and explains itself offline.

    ``view`` is ``bertviz.head_view`` or ``bertviz.model_view``; ``args``/``kwargs`` are what you would pass
    it (attention as a tuple of ``[batch, heads, seq, seq]`` tensors, one per layer, then the tokens).
    """
    from IPython.display import HTML, display

    if kwargs.pop("html_action", "view") != "view":
        raise ValueError("show_bertviz displays the view; call bertviz directly for html_action='return'")
    try:
        html = view(*args, html_action="return", **kwargs)
    except (ValueError, RuntimeError, IndexError) as exc:  # bertviz's own checks, or an empty tuple
        raise ValueError(f"bertviz could not draw this: {exc} (attention must be a tuple with one "
                         "[batch, heads, seq, seq] tensor per layer, seq = number of tokens; "
                         "course.viz.to_bertviz makes one from the course's models)") from None
    display(HTML(patient_bertviz_html(html.data, wait_s=wait_s)))


# ----------------------------------------------------------------------------------------------
# bertviz adapters
# ----------------------------------------------------------------------------------------------

def to_bertviz(weights: Sequence[Tensor] | Tensor, decimals: int = 3) -> tuple[Tensor, ...]:
    """Attention in bertviz's format: a tuple with one ``[batch, heads, q, k]`` tensor per layer.

    Accepts a list of per-layer ``[b, heads, q, k]`` tensors, a stacked ``[layers, b, heads, q, k]``
    tensor, or ``[layers, heads, q, k]`` (batch of one). Values are rounded to ``decimals`` places
    (as float64, so they print short) which keeps bertviz's HTML small.
    """
    if isinstance(weights, Tensor):
        if weights.dim() == 4:
            weights = weights.unsqueeze(1)
        if weights.dim() != 5:
            raise ValueError(f"expected [layers, batch, heads, q, k] or [layers, heads, q, k], got {tuple(weights.shape)}")
        weights = list(weights)
    out = []
    for i, w in enumerate(weights):
        if w.dim() != 4:
            raise ValueError(f"layer {i}: expected [batch, heads, q, k], got {tuple(w.shape)}")
        out.append(torch.round(w.detach().double().cpu(), decimals=decimals))
    if not out:
        raise ValueError("no layers given")
    return tuple(out)


@torch.no_grad()
def gpt_attentions(model: nn.Module, idx: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run a course :class:`~course.models.GPT` keeping its (causal) attention weights.

    ``idx [b, s] -> (hidden [b, s, d] after the final norm, [weights [b, heads, s, s] per layer])``;
    the hidden states equal ``model.hidden_states(idx)`` (same arithmetic).
    """
    with eval_mode(model):
        return model.hidden_states(idx, need_weights=True)


@torch.no_grad()
def cross_attentions_for_bertviz(model: nn.Module, src: Tensor, tgt_in: Tensor, decimals: int = 3) -> tuple[Tensor, ...]:
    """The encoder-decoder's cross-attention per decoder layer, ``[b, heads, t, s]`` each, for bertviz's
    ``head_view(cross_attention=..., encoder_tokens=..., decoder_tokens=...)``."""
    with eval_mode(model):
        _, cross = model.decode(tgt_in, model.encode(src), src, need_weights=True)
    return to_bertviz(cross, decimals)


# ----------------------------------------------------------------------------------------------
# The lessons' small explorers (00, 02, 04, 05, 09), all in the one style
# ----------------------------------------------------------------------------------------------

def _heads_bar(d_model: int, heads: int):
    """A d_model-wide bar cut into ``heads`` slices of d_model / heads features each."""
    use_course_style()
    fig, ax = plt.subplots(figsize=(7.0, 1.1))
    size = d_model // heads
    colours = plt.get_cmap("tab20")(np.arange(heads) % 20)
    ax.barh([0] * heads, [size] * heads, left=[h * size for h in range(heads)], color=colours, edgecolor="white")
    if heads <= 16:
        for h in range(heads):
            ax.text(h * size + size / 2, 0, f"h{h}", ha="center", va="center", fontsize=7)
    ax.set_xlim(0, d_model)
    ax.set_yticks([])
    ax.grid(False)
    ax.set_xlabel(f"the {d_model} features of d_model, one colour per head")
    fig.tight_layout()
    return fig


def heads_explorer(d_model: int = 512, heads: int = 2, max_heads: int = 16) -> FunctionExplorer:
    """Lesson 00's first widget: a slider for the number of heads and the cut of d_model it makes."""
    divisors = [h for h in range(1, max_heads + 1) if d_model % h == 0]

    def show(heads: int):
        if d_model % heads:
            raise ValueError(f"{d_model} features do not split into {heads} equal heads: choose one of "
                             f"{', '.join(map(str, divisors))}")
        return (f"{heads} attention head(s) of size {d_model // heads} for d_model = {d_model}",
                _heads_bar(d_model, heads))

    return FunctionExplorer(show, {"heads": slider(heads, 1, max_heads, 1, "heads", px_per_step=30)},
                            f"move the slider to split d_model = {d_model} into heads", text=False)


def tokenizer_explorer(tokenizers: Mapping[str, Any], text: str, max_chars: int = 400) -> FunctionExplorer:
    """Lesson 02: type text, see how each tokenizer cuts it (``tokenizers``: name -> tokenizer with ``pieces``)."""
    import ipywidgets as widgets

    from .tokenizers import tokenization_report

    def show(text: str):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("Type some text to see its tokens: the box is empty.")
        if len(text) > max_chars:
            raise ValueError(f"That is {len(text)} characters; this viewer shows at most {max_chars}.")
        counts = []
        for name, tok in tokenizers.items():
            try:
                counts.append(f"{name}: {len(tok.pieces(text))}")
            except ValueError:
                counts.append(f"{name}: cannot encode it")
        report = tokenization_report(text, tokenizers, max_chars=max_chars)
        return (f"{len(text)} characters; tokens per tokenizer: " + ", ".join(counts),
                f'<pre style="white-space: pre-wrap">{html.escape(report)}</pre>')

    box = widgets.Textarea(value=text, layout=widgets.Layout(width="95%", height="60px"))
    box.add_class("course-explorer-text")
    return FunctionExplorer(show, {"text": box}, "type text to see how each "
                            "tokenizer cuts it into tokens (a | between tokens, ␣ for a space)", picture=False)


def encoding_explorer(position: int = 20, dimension: int = 6, d_model: int = 128,
                      max_position: int = 200) -> FunctionExplorer:
    """Lesson 04: one entry of the sinusoidal positional encoding, PE[position, dimension], and its wave.

    The dimension slider's range follows d_model (0 to d_model - 1)."""
    import ipywidgets as widgets

    from . import positional

    def show(position, dimension, d_model):
        e = positional.encoding_entry(position, dimension, d_model, max_position)  # ValueError: one line
        xs = np.linspace(0, max_position, 4 * max_position + 1)
        wave = np.sin(xs * e.frequency) if e.function == "sin" else np.cos(xs * e.frequency)
        use_course_style()
        fig, ax = plt.subplots(figsize=(7.5, 2.2))
        ax.plot(xs, wave, lw=1)
        ax.plot([e.position], [e.value], "o", color="C3")
        ax.set_ylim(-1.15, 1.15)
        ax.set_xlabel("position")
        ax.set_title(f"dimension {e.dimension}: {e.function}(pos × {e.frequency:.4g})")
        fig.tight_layout()
        return positional.describe_encoding_entry(position, dimension, d_model, max_position), fig

    controls = {"position": slider(position, 0, max_position, 1, "position", px_per_step=4),
                "dimension": slider(dimension, 0, d_model - 1, 1, "dimension", px_per_step=6),
                "d_model": widgets.Text(value=str(d_model), description="d_model", continuous_update=False,
                                        style={"description_width": f"{DESCRIPTION_PX}px"})}
    return FunctionExplorer(show, controls, "move position and dimension, or type d_model (press Enter), to see "
                            "one entry of the sinusoidal encoding and the wave it lies on", text=False,
                            follow={"dimension": lambda v: (0, positional.encoding_entry(0, 0, v["d_model"]).d_model - 1)})


@torch.no_grad()
def head_contributions(mha: nn.Module, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each head's part of a multi-head self-attention output.

    ``mha``: a :class:`course.attention.MultiHeadAttention` (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``,
    ``num_heads``); ``x [seq, d_model]``. Returns ``weights [heads, seq, seq]`` and ``contributions
    [heads, seq, d_model]``: head h's output times its slice of ``out_proj``'s weight. Their sum over heads
    plus ``out_proj``'s bias is the layer's output ``mha(x, x, x)``.
    """
    from einops import rearrange

    from .attention import scaled_dot_product_attention

    if x.dim() != 2 or x.shape[-1] != mha.d_model:
        raise ValueError(f"x must be [seq, d_model={mha.d_model}], got shape {tuple(x.shape)}")
    h = mha.num_heads
    q, k, v = (rearrange(proj(x), "s (h d) -> h s d", h=h) for proj in (mha.q_proj, mha.k_proj, mha.v_proj))
    out, weights = scaled_dot_product_attention(q, k, v, mask)                   # [h, s, d_head], [h, s, s]
    w_o = rearrange(mha.out_proj.weight, "m (h d) -> h d m", h=h)               # [h, d_head, d_model]
    return weights, torch.einsum("hsd,hdm->hsm", out, w_o)


def most_common_offset(weights: np.ndarray) -> tuple[int, int]:
    """For a map ``[seq, seq]``: the offset ``query - key`` most rows look at hardest, and in how many rows."""
    offsets = np.arange(weights.shape[0]) - weights.argmax(-1)
    values, counts = np.unique(offsets, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]), int(counts[best])


class HeadExplorer(Explorer):
    """Lesson 05: every head of one multi-head attention layer, side by side: its attention pattern (top) and
    what it adds to the layer's output (bottom, ``[seq, d_model]``, one colour scale for all heads). Pick a
    head to frame it and read what it does.

    ``read_fn(text) -> (labels, x [seq, d_model])`` turns the typed text into the layer's input (it raises
    ``ValueError`` with a one-line message for text it cannot read).
    """

    def __init__(self, mha: nn.Module, read_fn: Callable[[str], tuple[Sequence[str], Tensor]], text: str,
                 head: int = 0, description: str = "Input:", dpi: int = 90):
        import ipywidgets as widgets

        self.mha, self.read_fn, self.dpi = mha, read_fn, dpi
        self.labels: list[str] = []
        self.weights: np.ndarray | None = None        # [heads, seq, seq]
        self.contributions: np.ndarray | None = None  # [heads, seq, d_model]
        self.text = widgets.Text(value=text, description=description, continuous_update=False,
                                 layout=widgets.Layout(width="60%"))
        self.text.add_class("course-explorer-text")
        self.head = widgets.ToggleButtons(options=[(f"head {h}", h) for h in range(mha.num_heads)], value=head,
                                          description="Head:")
        self._build("type an input (press Enter) and pick a head: each head's attention pattern above what it adds "
                    "to the layer's output", [self.text, self.head])
        self.text.observe(lambda change: self.set_text(change["new"]), names="value")
        self.head.observe(lambda change: self.redraw(), names="value")
        self.set_text(text)

    def set_text(self, text: str) -> bool:
        """Read ``text``, run the layer, redraw. True if drawn."""
        try:
            labels, x = self.read_fn(text)
            weights, contributions = head_contributions(self.mha, x)
        except ValueError as exc:
            self.refuse(str(exc).splitlines()[0])
            return False
        except Exception as exc:
            self.refuse(f"The layer could not run: {describe_exception(exc)}")
            return False
        self.labels, self.weights, self.contributions = list(labels), weights.numpy(), contributions.numpy()
        return self.redraw()

    def redraw(self) -> bool:
        if self.weights is None:
            return False
        self.show_picture(self.figure(), self.dpi)
        h = self.head.value
        offset, rows = most_common_offset(self.weights[h])
        norms = np.linalg.norm(self.contributions, axis=-1).mean(-1)   # [heads]: mean size of what each adds
        where = "itself" if offset == 0 else f"the position {offset} back" if offset > 0 else f"{-offset} ahead"
        others = ", ".join(f"head {g} {norms[g]:.2f}" for g in range(len(norms)) if g != h)
        self.ok(f"head {h}: {rows} of {len(self.labels)} positions look hardest at {where}; it adds a vector of "
                f"mean length {norms[h]:.2f} to each position" + (f" ({others})." if others else "."))
        return True

    def figure(self):
        """Patterns (top row) and contributions (bottom row), one column per head; the picked head framed."""
        heads, n = self.weights.shape[:2]
        use_course_style()
        size = min(3.6, 1.4 + 0.22 * n)
        fig, axes = plt.subplots(2, heads, figsize=(size * heads + 1.2, size * 1.9), squeeze=False,
                                 gridspec_kw={"height_ratios": [1, 0.9]})
        span = float(np.abs(self.contributions).max()) or 1.0
        for h in range(heads):
            top, bottom = axes[0, h], axes[1, h]
            pattern = top.imshow(self.weights[h], vmin=0, vmax=1, cmap="Blues")
            top.set_xticks(range(n), labels=self.labels, rotation=90, fontsize=7)
            top.set_yticks(range(n), labels=self.labels, fontsize=7)
            top.set_title(f"head {h}: where each row looks", fontsize=9)
            part = bottom.imshow(self.contributions[h], cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
            bottom.set_yticks(range(n), labels=self.labels, fontsize=7)
            bottom.set_xlabel("feature of d_model", fontsize=8)
            bottom.set_title(f"head {h}: what it adds to the output", fontsize=9)
            for ax in (top, bottom):
                ax.grid(False)
                if h == self.head.value:
                    for side in ax.spines.values():
                        side.set_visible(True)
                        side.set_edgecolor("#d62728")
                        side.set_linewidth(2.5)
        fig.tight_layout()
        fig.colorbar(pattern, ax=list(axes[0]), fraction=0.03, pad=0.02, label="weight")
        fig.colorbar(part, ax=list(axes[1]), fraction=0.03, pad=0.02, label="value")
        return fig


def head_explorer(mha: nn.Module, read_fn: Callable[[str], tuple[Sequence[str], Tensor]], text: str,
                  **kw) -> HeadExplorer:
    """Build a :class:`HeadExplorer` (end a cell with it to show it)."""
    return HeadExplorer(mha, read_fn, text, **kw)


def translation_explorer(model: nn.Module, text: str = "2001-09-30", beam_size: int = 4,
                         max_new_tokens: int = 20) -> FunctionExplorer:
    """Lesson 09: type an ISO date, see the encoder-decoder's greedy and beam translations beside the rule's."""
    import ipywidgets as widgets

    from .data.tasks import date_target
    from .seq2seq import translate

    def show(date: str):
        try:
            greedy, beam = (translate(model, [date], beam_size=k, max_new_tokens=max_new_tokens)[0]
                            for k in (1, beam_size))
        except ValueError as problem:
            raise ValueError(f"Cannot translate: {problem}") from None
        try:
            expected = date_target(date)
        except ValueError:
            expected = "(not a valid date: the model will guess)"
        verdict = "both right" if greedy == beam == expected else "greedy and beam differ" if greedy != beam else (
            "both wrong" if expected[0] != "(" else "a guess")
        return f"greedy: {greedy!r}   beam {beam_size}: {beam!r}   rule: {expected!r}   ({verdict})"

    box = widgets.Text(value=text, description="date:", continuous_update=False)
    box.add_class("course-explorer-text")
    return FunctionExplorer(show, {"date": box}, "type a date as YYYY-MM-DD (press Enter) to see the model's "
                            "greedy and beam-search translations beside the rule's answer", picture=False, text=False)


def memory_explorer(n_params: float = 7e9, world_size: int = 8, gpu_gb: int = 80) -> FunctionExplorer:
    """Lesson 19: the training state (weights, gradients, Adam: 16 bytes per parameter) each GPU holds with DDP
    and with FSDP, against a GPU's memory; the fewest GPUs FSDP needs. Sliders: model size (log scale), GPUs,
    GB per GPU."""
    from . import distributed as dd

    def show(n_params: float, world_size: int, gpu_gb: int):
        n = int(round(n_params))
        size = f"{n / 1e9:.3g} B" if n >= 10**9 else f"{n / 1e6:.3g} M"
        gb = 10**9
        ddp = dd.adam_bytes_per_rank(n, world_size, sharded=False) / gb
        fsdp = dd.adam_bytes_per_rank(n, world_size, sharded=True) / gb
        fewest = dd.gpus_needed(n, gpu_gb * gb)
        use_course_style()
        fig, ax = plt.subplots(figsize=(7.0, 2.6))
        bars = ax.barh(["FSDP", "DDP"], [fsdp, ddp], color=["#3a6fb0", "#9a9a9a"])
        ax.axvline(gpu_gb, color="#d62728", lw=2, label=f"one GPU: {gpu_gb} GB")
        for bar, value in zip(bars, (fsdp, ddp)):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.1f} GB", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(min(fsdp, gpu_gb) / 3, max(ddp, gpu_gb) * 6)
        ax.set_xlabel("training state per GPU (GB, log scale): weights, gradients, Adam")
        ax.set_title(f"{size} parameters on {world_size} GPU(s)", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(False)
        fig.tight_layout()
        fits = [name for name, v in (("DDP", ddp), ("FSDP", fsdp)) if v <= gpu_gb]
        verdict = f"fits with {' and '.join(fits)}" if fits else "fits with neither"
        return (f"{size} parameters: DDP {ddp:,.1f} GB per GPU, FSDP over {world_size} {fsdp:,.1f} GB; "
                f"{verdict} on {gpu_gb} GB GPUs; FSDP needs at least {fewest} of them (before activations).", fig)

    controls = {"n_params": slider(n_params, 8, 12, 0.05, "parameters", log=True, px_per_step=8,
                                   readout_format=".3g"),
                "world_size": slider(world_size, 1, 128, 1, "GPUs", px_per_step=5),
                "gpu_gb": slider(gpu_gb, 8, 192, 8, "GB per GPU", px_per_step=20)}
    return FunctionExplorer(show, controls, "move the model size, the number of GPUs and their memory to see what "
                            "each GPU must hold with DDP and with FSDP", text=False)
