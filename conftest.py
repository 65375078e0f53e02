"""Test-suite set-up shared by unit tests and nbval notebook runs.

- Kernels started by nbval inherit this process's environment, so strict checks are switched on
  here: an exercise checker that fails in a source notebook raises, and the notebook test fails.
- Only the lessons of the manifest (course/lessons.toml) are collected from notebooks/; a notebook the
  manifest lacks fails tests/tooling/test_lessons_manifest.py instead of running unannounced. A
  malformed manifest stops the run with one line.
- Each notebook's run time is collected (also across pytest-xdist workers) and printed at the end,
  against that lesson's budget in the manifest.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

os.environ["COURSE_STRICT_CHECKS"] = "1"
os.environ.setdefault("COURSE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never touches the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Each xdist worker runs its own kernel; share the cores between them instead of letting every
# kernel start one thread per core. Oversubscribed OpenMP threads spin-wait and can make small
# models train ten times slower.
# Only workers set it (the controller's environment is what workers inherit, so it must stay unset there).
if "PYTEST_XDIST_WORKER" in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import pytest

from course.lessons import NOTEBOOKS, ManifestError, load_manifest

ROOT = Path(__file__).resolve().parent
_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_failed: set[str] = set()


def pytest_configure(config):
    """A malformed manifest stops the run with its one-line message, before anything is collected."""
    try:
        load_manifest()
    except ManifestError as err:
        raise pytest.UsageError(f"course/lessons.toml: {err}") from None


def pytest_ignore_collect(collection_path, config):
    """When pytest walks notebooks/, it collects only the lessons the manifest lists (nbval would take any
    .ipynb); a notebook named on the command line still runs."""
    if collection_path.suffix == ".ipynb" and collection_path.parent == NOTEBOOKS:
        return collection_path.name not in load_manifest().by_notebook()
    return None


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _notebook_seconds[path] += report.duration
    if report.failed:
        _notebook_failed.add(path)


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    tr = terminalreporter
    manifest = load_manifest().by_notebook()
    tr.section("notebook run times (each lesson's budget on a two-core CPU is in course/lessons.toml)")
    for path, seconds in sorted(_notebook_seconds.items()):
        lesson = manifest.get(Path(path).name)
        budget = lesson.budget_s if lesson else load_manifest().budget_s
        verdict = "FAILED" if path in _notebook_failed else ("over budget" if seconds > budget else "ok")
        tr.write_line(f"{path:<48}{seconds:8.1f} s  {verdict}")
    tr.write_line("(times are measured under the test run's parallel load; `python3 bootstrap.py bench` times lessons alone)")
