#!/usr/bin/env python3
"""Start a new lesson: a notebook skeleton that already keeps every lesson rule, wired to its own module,
checker and tests, and its entry in the lesson manifest.

    python utils/new_lesson.py 12 modern_llm "a modern LLM" --builds "a Llama-style decoder ..." --part 3

writes (and refuses to overwrite any of them):

    notebooks/12_modern_llm.ipynb            Colab cell, title, what you will build, one exercise, summary, question
    course/modern_llm.py                     the piece the lesson builds (the package version learners import later)
    course/checks/modern_llm.py              the exercise's checker and its library of known mistakes
    tests/course/test_modern_llm.py          the module checked against PyTorch
    tests/checks/test_checks_modern_llm.py   the checker: passes the right answer, catches learner-style wrong ones
    course/lessons.toml                      the lesson's entry, in number order

then executes the notebook (utils/execute_notebooks.py's way), records its run time and regenerates the
README's syllabus table. The example exercise (centring vectors) only shows the wiring: replace it, its
checker and its tests with the lesson's own. ``--module NAME`` names the module and checker files when the
slug is not a good module name. CONTRIBUTING.md says what comes next.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from string import Template

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course.lessons import MANIFEST, SLUG, ManifestError, lessons, parse_manifest  # noqa: E402
from utils.colab import SETUP_TAG, setup_cell_source  # noqa: E402

NBGRADER_SCHEMA = 3


class ScaffoldError(ValueError):
    """The new lesson cannot be written as asked (its number, slug or files are taken, ...)."""


MODULE = Template('''"""$title (lesson $nn): the pieces the lesson builds in the open, in their package version.

The lesson writes each piece cell by cell; later lessons import it from here. Replace the example below
(centring vectors) with the lesson's own pieces, each with type hints and a docstring that says what shape
goes in and what comes out, and check each against PyTorch's own module in tests/course/test_$module.py.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["centre"]


def centre(x: Tensor) -> Tensor:
    """``x [..., d] -> [..., d]``: each vector minus its own mean over the last dimension."""
    return x - x.mean(dim=-1, keepdim=True)
''')

CHECKS = Template('''"""Checkers for lesson $nn ($title).

Each checker compares the learner's function with the package version on a few cases (including the
boundaries the exercise defines) and, when the values are wrong, names the likely mistake from a library
of known wrong implementations. tests/checks/test_checks_$module.py proves each mistake gets its hint.
"""
from __future__ import annotations

import torch

from course.$module import centre
from .core import CheckResult, Mistake, check_function


def centre_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([[1.0, 2.0, 6.0]]),),
        (torch.randn(4, 6, generator=g),),
        (torch.randn(2, 3, 5, generator=g),),
        # A large shared offset: the result must not depend on it.
        (torch.randn(3, 7, generator=g) + 1000.0,),
    ]


CENTRE_MISTAKES = [
    Mistake("mean over the wrong axis: subtract each vector's mean over the last dimension (dim=-1)",
            lambda x: x - x.mean(dim=0, keepdim=True)),
    Mistake("subtracted the mean of the whole tensor: each vector needs its own mean (dim=-1, keepdim=True)",
            lambda x: x - x.mean()),
    Mistake("divided by the standard deviation as well: centring only subtracts the mean",
            lambda x: (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True)),
]


def check_centre(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [..., d]) -> [..., d]``, each vector minus its mean over the last dimension."""
    return check_function("centre", fn, centre, centre_cases(), mistakes=CENTRE_MISTAKES, atol=1e-4, strict=strict)
''')

MODULE_TEST = Template('''"""course.$module (lesson $nn): each piece checked against PyTorch, to a stated tolerance."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.$module import centre


def test_centre_is_layer_norms_numerator():
    # LayerNorm without scale or shift is (x - mean) / std, so centring is LayerNorm times the std.
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    std = x.var(dim=-1, unbiased=False, keepdim=True).sqrt()
    torch.testing.assert_close(centre(x), F.layer_norm(x, (8,), eps=0.0) * std, atol=1e-5, rtol=1e-5)


def test_centred_vectors_have_zero_mean_and_keep_their_shape():
    x = torch.randn(5, 7) + 3.0
    out = centre(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(5), atol=1e-6, rtol=0)
''')

CHECKS_TEST = Template('''"""Lesson $nn's checker: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import pytest
from answer_library import Right, Wrong, library_tests

from course.checks.$module import check_centre

pytestmark = pytest.mark.usefixtures("lenient_checks")


def learner_centre(x):
    mean = x.sum(dim=-1, keepdim=True) / x.shape[-1]
    return x - mean


# Answers a learner might write (independent of the checker's own mistake library), in the shape
# tests/checks/answer_library.py reads: each wrong one with the words its line must contain.
WRONG_CENTRES = [
    Wrong("mean down the columns", lambda x: x - x.mean(dim=0), "wrong axis"),
    Wrong("one mean for everything", lambda x: x - x.mean(), "whole tensor"),
    Wrong("standardised instead", lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True), "standard deviation"),
    Wrong("forgot to subtract", lambda x: x.clone(), "Largest error"),
    Wrong("returns nothing", lambda x: None, "None"),
]
RIGHT_CENTRES = [
    Right("sum over the count", learner_centre),
    Right("mean with keepdim", lambda x: x - x.mean(dim=-1, keepdim=True)),
]

LIBRARY = {check_centre: (WRONG_CENTRES, RIGHT_CENTRES)}


# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


def test_an_unattempted_exercise_says_so():
    def centre(x):
        raise NotImplementedError()

    result = check_centre(centre)
    assert not result.passed and "not attempted yet" in result.line
''')

MANIFEST_ENTRY = Template('''
[[lesson]]
number = $number
slug = "$slug"
title = "$title"
builds = "$builds"
part = $part
modules = ["course.$module"]
checks = "course.checks.$module"
budget_s = $budget
extras = []
gpu = false
''')


def _md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def _code(src: str, **metadata):
    return nbformat.v4.new_code_cell(src.strip("\n"), metadata=metadata)


def sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


def notebook(nn: str, title: str, builds: str, module: str):
    """The lesson skeleton: every cell a lesson needs, in the order the lesson rules ask for. The
    ``(author: ...)`` placeholders pass the rules; utils/lesson_rules.py lists those still left as notes."""
    solution_meta = {"grade": False, "grade_id": "centre", "locked": False, "schema_version": NBGRADER_SCHEMA,
                     "solution": True, "task": False}
    check_meta = {"grade": True, "grade_id": "centre-check", "locked": True, "points": 1,
                  "schema_version": NBGRADER_SCHEMA, "solution": False, "task": False}
    cells = [
        _code(setup_cell_source(), tags=[SETUP_TAG]),
        _md(f"""
# {nn} · {title[:1].upper() + title[1:]}

**What you will build.** {sentence(builds)}

**Why it matters.** *(author: two or three sentences: what can a learner do or understand after this lesson
that they could not before? Which claim does the lesson measure?)*
"""),
        _code("""
import torch

from course.plotting import use_course_style
from course.seed import seed_everything

use_course_style()
seed_everything(0);
"""),
        _md("""
## 1. The idea, in the open

*(author: write each piece here, cell by cell, so the learner sees every line; print or annotate shapes.)* The
example below centres vectors: it subtracts each vector's mean over its last dimension, the first step of
LayerNorm.
"""),
        _code("""
x = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
print("x:", x.tolist())
print("mean of each row:", x.mean(dim=-1).tolist())
"""),
        _md("""
## 2. Exercise: centre each vector

Write `centre(x)` for a tensor of any shape `[..., d]`: each vector minus its own mean over the last
dimension. The checker below compares your function with the course's and names the likely mistake.
"""),
        _code('''
def centre(x: torch.Tensor) -> torch.Tensor:
    """x [..., d] -> [..., d]: each vector minus its mean over the last dimension."""
    ### BEGIN SOLUTION
    return x - x.mean(dim=-1, keepdim=True)
    ### END SOLUTION
''', nbgrader=solution_meta, tags=["exercise"]),
        _code(f"""
from course.checks.{module} import check_centre

check_centre(centre)
""", nbgrader=check_meta, tags=["exercise-check"]),
        _md(f"""
The checker compared your function with `course.{module}.centre`, the package version that the rest of
the course imports instead of repeating this code. From here on the lesson uses it too:
"""),
        _code(f"""
from course import {module}

print("x:            ", x.tolist())
print("centred rows: ", {module}.centre(x).tolist())
print("row means now:", {module}.centre(x).mean(dim=-1).tolist())
""", tags=["nbval-check-output"]),
        _md("""
## What you built

- *(author: one line per piece, with the figure the lesson measured.)*

**A question to take away.** *(author: one open question the learner can think about, ending with a question
mark, in place of this one.)* Why might a model want to centre its vectors before comparing them?
"""),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def plan(number: int, slug: str, title: str, builds: str, part: int | None, module: str | None,
         root: Path = ROOT) -> tuple[dict[Path, str], Path]:
    """What the scaffold writes: ``({path: text} for the new files and the manifest, the notebook's path)``;
    ScaffoldError, with the reason, if it cannot."""
    existing = lessons(root / "course" / "lessons.toml")
    if not 0 <= number <= 99:
        raise ScaffoldError(f"the lesson number must be 0-99, got {number}")
    if not SLUG.fullmatch(slug):
        raise ScaffoldError(f"slug {slug!r}: use lower-case letters, digits and underscores, starting with a letter")
    module = module or slug
    if not SLUG.fullmatch(module):
        raise ScaffoldError(f"module name {module!r}: use lower-case letters, digits and underscores")
    for lesson in existing:
        if lesson.number == number:
            raise ScaffoldError(f"lesson {number:02d} exists already ({lesson.notebook}); pick the next free number")
        if lesson.slug == slug:
            raise ScaffoldError(f"slug {slug!r} is taken by lesson {lesson.number:02d}")
    if '"' in title or '"' in builds or "\\" in title + builds:
        raise ScaffoldError("keep double quotes and backslashes out of the title and the one-line summary")
    nn = f"{number:02d}"
    values = {"nn": nn, "number": number, "slug": slug, "title": title, "builds": builds, "module": module,
              "part": part if part is not None else (existing[-1].part if existing else 1), "budget": 180}
    files = {
        root / "course" / f"{module}.py": MODULE.substitute(values),
        root / "course" / "checks" / f"{module}.py": CHECKS.substitute(values),
        root / "tests" / "course" / f"test_{module}.py": MODULE_TEST.substitute(values),
        root / "tests" / "checks" / f"test_checks_{module}.py": CHECKS_TEST.substitute(values),
    }
    notebook_path = root / "notebooks" / f"{nn}_{slug}.ipynb"
    taken = [p for p in [notebook_path, *files] if p.exists()]
    if taken:
        raise ScaffoldError(f"{taken[0].relative_to(root)} exists already; choose another slug or --module NAME")
    manifest = root / "course" / "lessons.toml"
    files[manifest] = with_entry(manifest.read_text(encoding="utf-8"), number, MANIFEST_ENTRY.substitute(values))
    try:
        parse_manifest(files[manifest])
    except ManifestError as err:
        raise ScaffoldError(f"the new manifest entry would be invalid: {err}") from None
    files[notebook_path] = nbformat.writes(notebook(nn, title, builds, module)) + "\n"
    return files, notebook_path


def with_entry(manifest_text: str, number: int, entry: str) -> str:
    """The manifest's text with ``entry`` placed among the lessons in number order (lessons may be written
    out of order: 14 before 13)."""
    head, *blocks = re.split(r"(?m)^(?=\[\[lesson\]\])", manifest_text)
    later = [i for i, b in enumerate(blocks) if int(re.search(r"(?m)^number = (\d+)", b).group(1)) > number]
    at = later[0] if later else len(blocks)
    before = "".join([head, *blocks[:at]]).rstrip("\n") + "\n"
    return before + entry + ("\n" + "".join(blocks[at:]) if blocks[at:] else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("number", type=int, help="the lesson's number, e.g. 12")
    parser.add_argument("slug", help="its name in file names, e.g. modern_llm")
    parser.add_argument("title", help='its title, lower case as in the syllabus, e.g. "a modern LLM"')
    parser.add_argument("--builds", default="(author: say in one line what the learner builds: `builds` in course/lessons.toml)",
                        help="one line: what the learner builds (the README's syllabus column)")
    parser.add_argument("--part", type=int, help="the course part, 1-5 (default: the last lesson's)")
    parser.add_argument("--module", help="the name of its course module and checker module (default: the slug)")
    parser.add_argument("--no-execute", action="store_true", help="write the files but do not execute the notebook")
    args = parser.parse_args(argv)
    try:
        files, notebook_path = plan(args.number, args.slug, args.title, args.builds, args.part, args.module)
    except ScaffoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"{'added its entry to' if path == MANIFEST else 'wrote'} {path.relative_to(ROOT)}")
    if args.no_execute:
        print(f"next: python utils/execute_notebooks.py --write-readme {notebook_path.stem}")
        return 0
    from utils.execute_notebooks import main as execute_main

    status = execute_main([notebook_path.stem, "--write-readme"])
    print("next: replace the example with the lesson's own pieces; see CONTRIBUTING.md, 'Adding a lesson'.")
    return status


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
