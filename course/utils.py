"""Small helpers the other modules share: eval mode for a block, one-line error messages, shapes,
plain-text tables and the one-line message of a widget. Light to import: no torch, no widgets."""
from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["eval_mode", "first_line", "describe_exception", "shape_of", "format_table", "show_message"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the ``with`` block, then back in the mode it was in (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def first_line(text: object, limit: int = 160) -> str:
    """The first non-blank line of ``str(text)``, stripped; longer than ``limit``, cut and ended with "..."."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def describe_exception(exc: BaseException, limit: int = 160) -> str:
    """``"TypeName: first line of the message"`` (just ``"TypeName"`` when there is no message)."""
    line = first_line(exc, limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    """A tensor's shape as a plain tuple, for messages: ``(2, 3)`` rather than ``torch.Size([2, 3])``."""
    return tuple(t.shape)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None,
                 align: str | None = None, notes: bool = False) -> str:
    """A plain-text table: columns padded to their widest entry, two spaces apart, a line of dashes
    under the ``header`` (if any), no trailing spaces.

    ``align`` gives ``"<"`` (left) or ``">"`` (right) for each column. By default, outside the first
    column, numbers (also as text, such as ``"1,000"``) are right-aligned and the rest left-aligned; a
    column's header follows its entries when they are all numbers. Every row needs one entry per
    column, unless ``notes=True``: then a row may stop early, and its last entry is a note that runs
    on across the remaining columns without widening them.
    """
    cells = [[str(c) for c in row] for row in rows]
    head = None if header is None else [str(h) for h in header]
    columns = len(head) if head is not None else max((len(r) for r in cells), default=0)
    if any(len(r) > columns or (len(r) < columns and not notes) for r in cells):
        raise ValueError(f"every row needs {columns} entries")
    if align is not None and (len(align) != columns or set(align) - {"<", ">"}):
        raise ValueError(f"align needs one '<' or '>' per column ({columns}), got {align!r}")
    full = ([head] if head is not None else []) + [r if len(r) == columns else r[:-1] for r in cells]
    widths = [max((len(r[j]) for r in full if j < len(r)), default=0) for j in range(columns)]
    numeric = [j > 0 and all(_is_number(r[j]) for r in cells if len(r) == columns) for j in range(columns)]

    def right(j: int, cell: str, is_header: bool) -> bool:
        if align is not None:
            return align[j] == ">"
        return numeric[j] if is_header else j > 0 and _is_number(cell)

    def line(row: list[str], is_header: bool = False) -> str:
        padded = [c.rjust(w) if right(j, c, is_header) else c.ljust(w)
                  for j, (c, w) in enumerate(zip(row, widths))]
        if len(row) < columns:  # a note: as it is, after the columns before it
            padded[-1] = row[-1]
        return "  ".join(padded).rstrip()

    out = [] if head is None else [line(head, is_header=True), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def show_message(widget, line: str, ok: bool) -> None:
    """Show ``line`` in an ``ipywidgets.HTML`` (``widget``): green when ``ok``, red when not; the text is escaped."""
    colour = "#2a7a2a" if ok else "#b00020"
    widget.value = f'<span style="color:{colour}">{html.escape(line)}</span>'
