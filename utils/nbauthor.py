"""Small helpers for writing lesson notebooks from a Python script (maintainers only).

    from utils.nbauthor import lesson, md, code, solution, check
    nb = lesson([md("# 03 Self-attention"), code("import torch"),
                 solution("def f(x):\\n    ### BEGIN SOLUTION\\n    return x\\n    ### END SOLUTION", "f"),
                 check("check_f(f)", "f")])
    nbformat.write(nb, "notebooks/03_self_attention.ipynb")

Then run ``python utils/colab.py --write`` (adds the Colab set-up cell) and
``python utils/execute_notebooks.py notebooks/03_self_attention.ipynb`` (fills the outputs).
"""
from __future__ import annotations

import nbformat

_SCHEMA = 3


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(src: str, tags: list[str] | None = None, check_output: bool = False):
    """A code cell; ``check_output=True`` makes nbval compare its output with the committed one."""
    tags = list(tags or [])
    if check_output:
        tags.append("nbval-check-output")
    meta = {"tags": tags} if tags else {}
    return nbformat.v4.new_code_cell(src.strip("\n"), metadata=meta)


def solution(src: str, grade_id: str):
    """An exercise cell: the solution sits between ### BEGIN SOLUTION and ### END SOLUTION."""
    if "### BEGIN SOLUTION" not in src:
        raise ValueError(f"solution cell {grade_id!r} has no ### BEGIN SOLUTION marker")
    meta = {"nbgrader": {"grade": False, "grade_id": grade_id, "locked": False,
                         "schema_version": _SCHEMA, "solution": True, "task": False},
            "tags": ["exercise"]}
    return nbformat.v4.new_code_cell(src.strip("\n"), metadata=meta)


def check(src: str, grade_id: str, points: int = 1):
    """The checker cell after an exercise: locked and graded under nbgrader."""
    meta = {"nbgrader": {"grade": True, "grade_id": f"{grade_id}-check", "locked": True,
                         "points": points, "schema_version": _SCHEMA, "solution": False, "task": False},
            "tags": ["exercise-check"]}
    return nbformat.v4.new_code_cell(src.strip("\n"), metadata=meta)


def lesson(cells: list):
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb
