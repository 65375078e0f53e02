"""utils/new_lesson.py: a new lesson's skeleton keeps every rule and passes the suite as written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course.lessons import lessons, parse_manifest
from utils.new_lesson import ScaffoldError, notebook, plan

ROOT = Path(__file__).resolve().parents[2]
LAST = lessons()[-1]
NEXT = LAST.number + 1


@pytest.mark.parametrize("number, slug, module, words", [
    (LAST.number, "fresh_topic", None, f"lesson {LAST.number:02d} exists already"),
    (NEXT, LAST.slug, None, f"slug {LAST.slug!r} is taken"),
    (NEXT, "Fresh Topic", None, "lower-case letters"),
    (NEXT, "fresh_topic", "attention", "course/attention.py exists already"),
    (120, "too_far", None, "0-99"),
])
def test_the_scaffold_refuses_what_it_cannot_write_and_says_why(number, slug, module, words):
    with pytest.raises(ScaffoldError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan(number, slug, "Title", "builds something", None, module)


def test_a_lesson_written_out_of_order_takes_its_place_in_the_manifest(tmp_path):
    manifest = tmp_path / "course" / "lessons.toml"
    manifest.parent.mkdir()
    head, *entries = (ROOT / "course" / "lessons.toml").read_text(encoding="utf-8").split("\n[[lesson]]")
    manifest.write_text(head + "".join("\n[[lesson]]" + e for e in entries if "\nnumber = 3\n" not in e))
    files, notebook = plan(3, "early", "early lesson", "builds something", None, None, root=tmp_path)
    numbers = [lesson.number for lesson in parse_manifest(files[manifest]).lessons]
    assert numbers == sorted(numbers) and 3 in numbers
    assert notebook == tmp_path / "notebooks" / "03_early.ipynb"


def test_the_skeleton_reads_as_sentences_and_imports_the_answer_only_after_the_exercise():
    nb = notebook("12", "a modern LLM", "a Llama-style decoder", "modern_llm")
    title = nb.cells[1].source
    assert title.startswith("# 12 · A modern LLM") and "**What you will build.** A Llama-style decoder." in title
    exercise = next(i for i, c in enumerate(nb.cells) if "exercise" in c.metadata.get("tags", []))
    imports = [i for i, c in enumerate(nb.cells) if "from course import modern_llm" in c.source]
    assert imports and min(imports) > exercise


def _copy_of_the_repository(target: Path) -> None:
    """The files a clean clone has (tracked, or new and not ignored), as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("git is needed to list the repository's files")
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}


def test_a_scaffolded_lesson_touches_only_its_own_files_and_passes_the_suite(tmp_path):
    repo = tmp_path / "repo"
    _copy_of_the_repository(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = str(repo)  # the copy's course package, also in the kernels the notebook runs in
    before = _files(repo)
    name = f"{NEXT:02d}_scaffold_demo"
    made = subprocess.run([sys.executable, "utils/new_lesson.py", str(NEXT), "scaffold_demo", "Scaffold demo",
                           "--builds", "a demonstration of the scaffold"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    after = _files(repo)
    added = sorted(set(after) - set(before))
    changed = sorted(p for p in before if before[p] != after.get(p))
    assert added == sorted([f"notebooks/{name}.ipynb", "course/scaffold_demo.py", "course/checks/scaffold_demo.py",
                            "tests/course/test_scaffold_demo.py", "tests/checks/test_checks_scaffold_demo.py"])
    assert changed == ["README.md", "course/lessons.toml"]  # the manifest entry, and the table generated from it

    # Every rule and every lesson-wide test, on the new lesson beside the others; its own tests; its notebook
    # under nbval; its student version run to the first exercise. (-k leaves out only the other lessons'
    # student runs, which the main suite does.)
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "tests/tooling",
                            "tests/course/test_scaffold_demo.py", "tests/checks/test_checks_scaffold_demo.py",
                            "tests/checks/test_answer_library.py", f"notebooks/{name}.ipynb", "-k", "not runs_to_the_first_exercise or scaffold_demo",
                            "--deselect", "tests/tooling/test_new_lesson.py"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    for test in [f"PASSED notebooks/{name}.ipynb::Cell 0",
                 f"PASSED tests/tooling/test_student_notebooks.py::test_student_notebook_runs_to_the_first_exercise_and_says_not_attempted[{name}.ipynb]",
                 f"PASSED tests/tooling/test_notebook_hygiene.py::test_every_exercise_has_nbgrader_metadata_and_a_checker_from_the_lessons_checks_module[{name}.ipynb]",
                 f"PASSED tests/tooling/test_lessons_manifest.py::test_a_lesson_imports_the_modules_it_builds[{name}]",
                 "PASSED tests/checks/test_answer_library.py::test_a_checker_module_exposes_its_library_in_the_shared_shape"
                 "[test_checks_scaffold_demo]"]:
        assert test in suite.stdout, f"{test} did not run"
