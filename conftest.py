"""Test-suite set-up shared by unit tests and nbval notebook runs.

- Kernels started by nbval inherit this process's environment, so strict checks are switched on
  here: an exercise checker that fails in a source notebook raises, and the notebook test fails.
- Each notebook's run time is collected (also across pytest-xdist workers) and printed at the end,
  against the three-minute budget per lesson.
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

ROOT = Path(__file__).resolve().parent
BUDGET_S = 180.0
_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_failed: set[str] = set()


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
    tr.section("notebook run times (budget 180 s per lesson on a two-core CPU)")
    for path, seconds in sorted(_notebook_seconds.items()):
        verdict = "FAILED" if path in _notebook_failed else ("over budget" if seconds > BUDGET_S else "ok")
        tr.write_line(f"{path:<48}{seconds:8.1f} s  {verdict}")
    tr.write_line("(times are measured under the test run's parallel load; `python3 bootstrap.py bench` times lessons alone)")
