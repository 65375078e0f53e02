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
           px_per_step: float = 4, continuous_update: bool = False, readout_format: str | None = None):
    """An ``IntSlider`` (or ``FloatSlider`` when any argument is a float) whose track is wide enough for
    ``px_per_step`` pixels per step, between 200 and :data:`MAX_TRACK_PX` pixels.

    ``continuous_update=False``: the picture follows when the handle is let go (or an arrow key pressed),
    so a drag does not queue dozens of redraws.
    """
    import ipywidgets as widgets

    if not min <= value <= max or step <= 0:
        raise ValueError(f"slider {description!r}: need min <= value <= max and step > 0, got "
                         f"{min}, {value}, {max}, step {step}")
    steps = (max - min) / step
    track = int(np.clip(steps * px_per_step, 200, MAX_TRACK_PX))
    is_float = any(isinstance(v, float) for v in (value, min, max, step))
    kind = widgets.FloatSlider if is_float else widgets.IntSlider
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
        if self.button is None:
            for control in self.controls.values():
                control.observe(lambda change: self.update(), names="value")
        self.update()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> bool:
        """Call the function with the controls' values and show what it returns; True if it was shown.

        The function returns a line (str), a figure, or ``(line, figure_or_html)``; a ``ValueError`` it raises
        is the one-line message for refused input (any other exception is named in one line too).
        """
        for name, bounds in self.follow.items():  # ranges that follow other controls come first
            try:
                set_range(self.controls[name], *bounds(self.values()))
            except (ValueError, TypeError):
                pass  # the other control holds bad input: the function below says so
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
        if problem:
            self._say(problem, ok=False)
            return False
        try:
            self.show_picture(self._render())
        except Exception as exc:
            self._say(f"Could not draw: {describe_exception(exc)}", ok=False)
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
