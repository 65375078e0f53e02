"""One plot style for the whole course, and small helpers every lesson uses."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

COURSE_STYLE = {
    "figure.figsize": (6.0, 3.6),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "savefig.bbox": "tight",
}


def use_course_style() -> None:
    """Apply the course's matplotlib style (idempotent)."""
    mpl.rcParams.update(COURSE_STYLE)


def heatmap(ax, matrix, row_labels=None, col_labels=None, title: str = "", vmin=None, vmax=None):
    """Draw a 2-D array as a labelled heatmap on ``ax``; return the image (for a colour bar)."""
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, aspect="auto")
    ax.grid(False)
    if row_labels is not None:
        ax.set_yticks(range(len(row_labels)), labels=row_labels)
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=60, ha="right")
    if title:
        ax.set_title(title)
    return im


def new_figure(*args, **kw):
    """``plt.subplots`` with the course style applied first."""
    use_course_style()
    return plt.subplots(*args, **kw)
