"""Execute a lesson notebook the way a learner would: top to bottom, in a fresh kernel."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course.utils import first_line  # noqa: E402

__all__ = ["CellExecutionError", "CellTimeoutError", "execute", "describe_cell_error", "scrub"]


def execute(path: Path, timeout: int = 600, env: dict | None = None, allow_errors: bool = False):
    """Run ``path`` in a fresh python3 kernel (cwd: its folder); return (notebook, seconds)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)  # widget state from an earlier run must not outlive it
    saved = os.environ.copy()
    os.environ.update(env or {})
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                                resources={"metadata": {"path": str(path.parent)}})
        started = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - started
        # No saved widget state: it is large, and JupyterLab would show its stale snapshots on opening.
        # (nbclient's store_widget_state=False breaks on Output widgets, so it is dropped afterwards.)
        nb.metadata.pop("widgets", None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb, seconds


def describe_cell_error(err: CellExecutionError | CellTimeoutError) -> str:
    """One line for a cell that raised (``"ValueError: message"``, colour codes removed) or ran past the
    executor's time limit while a lesson ran."""
    ename, evalue = getattr(err, "ename", "") or "", getattr(err, "evalue", "") or ""
    text = f"{ename}: {evalue}" if ename else str(err)
    return first_line(re.sub(r"\x1b\[[0-9;]*m", "", text), 200)


_MACHINE_PATHS = [re.escape(str(ROOT)), re.escape(str(Path.home())), r"/tmp/[^\s'\"]*"]


def scrub(nb) -> list[str]:
    """Drop run-specific metadata and return the machine paths that outputs still show."""
    found = []
    pattern = re.compile("|".join(_MACHINE_PATHS))
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        for out in cell.get("outputs", []):
            found += pattern.findall(json.dumps(out))
    return sorted(set(found))
