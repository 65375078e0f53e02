"""The lesson manifest (course/lessons.toml) is the one list of lessons, and it tells the truth."""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from course.lessons import (MANIFEST, NOTEBOOKS, ManifestError, lesson_for, lessons, load_manifest,
                            parse_manifest, record_run_times)
from utils import lesson_rules, syllabus

ROOT = Path(__file__).resolve().parents[2]
LESSONS = lessons()
ids = [lesson.name for lesson in LESSONS]


def test_every_notebook_is_a_lesson_of_the_manifest_and_every_lesson_has_its_notebook():
    on_disk = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    listed = {lesson.notebook for lesson in LESSONS}
    assert on_disk - listed == set(), "notebooks the manifest lacks: add them to course/lessons.toml"
    assert listed - on_disk == set(), "lessons in the manifest without a notebook"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_the_modules_a_lesson_names_exist(lesson):
    for module in [*lesson.modules, lesson.checks]:
        assert importlib.util.find_spec(module) is not None, f"{lesson.name}: no module {module}"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_a_lesson_imports_the_modules_it_builds(lesson):
    assert lesson_rules.imports_its_modules(nbformat.read(lesson.path(), as_version=4), lesson) == []


def test_imports_count_through_a_package_that_re_exports_them():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from course.models import GPT\nfrom course import positional\nimport course.rnn as r\n%matplotlib inline")])
    found = lesson_rules.imported_modules(nb)
    assert {"course.models.gpt", "course.positional", "course.rnn"} <= found


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_each_lesson_has_a_measured_run_time_within_its_budget(lesson):
    assert lesson.measured_s is not None, "run: python3 bootstrap.py bench --write-readme"
    assert lesson.measured_s <= lesson.budget_s


def test_lessons_with_gpu_cells_use_a_gpu_when_there_is_one():
    for lesson in LESSONS:
        if lesson.gpu:
            assert "cuda" in lesson.path().read_text(encoding="utf-8"), lesson.notebook


def test_readme_syllabus_table_is_generated_from_the_manifest():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert syllabus.with_table(text) == text, "run: python utils/syllabus.py --write"
    for lesson in LESSONS:
        assert f"[{lesson.label}](notebooks/{lesson.notebook})" in text


def test_syllabus_without_its_markers_says_which_markers_it_needs():
    with pytest.raises(syllabus.MarkersMissing, match="syllabus:start"):
        syllabus.with_table("# A README with no table\n")


def test_a_notebook_outside_the_manifest_is_named_in_the_error():
    with pytest.raises(ManifestError, match="99_nowhere.ipynb is not a lesson"):
        lesson_for("notebooks/99_nowhere.ipynb")
    assert lesson_for(NOTEBOOKS / LESSONS[3].notebook) == LESSONS[3]


def test_recording_run_times_changes_only_the_measured_lines(tmp_path):
    copy = tmp_path / "lessons.toml"
    original = MANIFEST.read_text(encoding="utf-8")
    copy.write_text(original, encoding="utf-8")
    first, second = LESSONS[0], LESSONS[-1]
    record_run_times({first.notebook: 1234.4, second.notebook: 987.6}, path=copy)  # no lesson takes that long
    after = load_manifest(copy)
    assert after.lessons[0].measured_s == 1234 and after.lessons[-1].measured_s == 988
    assert [lesson.measured_s for lesson in after.lessons[1:-1]] == [lesson.measured_s for lesson in LESSONS[1:-1]]
    changed = [(a, b) for a, b in zip(original.splitlines(), copy.read_text().splitlines()) if a != b]
    assert len(changed) == 2 and all(b.startswith("measured_s = ") for _, b in changed)
    with pytest.raises(ManifestError, match="not a lesson"):
        record_run_times({"99_nowhere.ipynb": 1.0}, path=copy)


def test_recording_adds_a_measured_line_to_a_lesson_that_has_none(tmp_path):
    copy = tmp_path / "lessons.toml"
    copy.write_text(re.sub(r"(?m)^measured_s = \d+\n", "", MANIFEST.read_text(encoding="utf-8")), encoding="utf-8")
    assert load_manifest(copy).lessons[2].measured_s is None
    record_run_times({LESSONS[2].notebook: 9.0}, path=copy)
    assert load_manifest(copy).lessons[2].measured_s == 9


def _manifest_with(changes: dict, drop: str | None = None) -> str:
    """The real manifest's text with the first lesson's fields changed (TOML values) or one dropped."""
    head, first, *rest = re.split(r"(?m)^(?=\[\[lesson\]\])", MANIFEST.read_text(encoding="utf-8"))
    for field, value in changes.items():
        first = re.sub(rf"(?m)^{field} = .*$", f"{field} = {value}", first)
    if drop:
        first = re.sub(rf"(?m)^{drop} = .*\n", "", first)
    return head + first + "".join(rest)


@pytest.mark.parametrize("changes, drop, words", [
    ({}, "title", "lesson setup: missing field 'title'"),
    ({"number": '"zero"'}, None, "'number' has the wrong type"),
    ({"slug": '"Set Up"'}, None, "slug must be lower-case"),
    ({"part": "9"}, None, "part 9 is not one of"),
    ({"extras": '["gpt5"]'}, None, "unknown extra(s) gpt5"),
    ({"budget_s": "600"}, None, "budget_s must be between 0 and the course's 180 s"),
    ({"checks": '"course.basics"'}, None, "checks must name a module in course.checks"),
    ({"slug": '"why_attention"'}, None, "two lessons share the slug 'why_attention'"),
    ({"number": "5"}, None, "two lessons share the number 5"),
])
def test_a_malformed_manifest_names_the_lesson_and_the_field(changes, drop, words):
    with pytest.raises(ManifestError, match=re.escape(words)):
        parse_manifest(_manifest_with(changes, drop))


def test_lessons_out_of_number_order_are_refused():
    with pytest.raises(ManifestError, match="number order"):
        parse_manifest(_manifest_with({"number": "42"}))


def test_nbval_collects_only_the_manifests_notebooks(tmp_path):
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    assert conftest.pytest_ignore_collect(NOTEBOOKS / "99_draft.ipynb", None) is True
    assert conftest.pytest_ignore_collect(LESSONS[0].path(), None) is False
    assert conftest.pytest_ignore_collect(tmp_path / "99_draft.ipynb", None) is None


def test_a_lesson_can_be_named_by_its_number_slug_name_or_notebook():
    third = LESSONS[3]
    for name in [str(third.number), f"{third.number:02d}", third.slug, third.name, str(third.path())]:
        assert lesson_for(name) == third, name


def test_tools_end_a_manifest_error_in_one_line(capsys):
    from utils import run_cli

    def main():
        raise ManifestError("lesson setup: missing field 'builds'")

    assert run_cli(main) == 2
    assert capsys.readouterr().err == "error: lesson setup: missing field 'builds'\n"


def test_a_misspelt_field_is_named_as_a_likely_typo():
    text = MANIFEST.read_text(encoding="utf-8").replace("\nbuilds = ", "\nbuidls = ", 1)
    with pytest.raises(ManifestError, match=re.escape("missing field 'builds' (is 'buidls' a typo?)")):
        parse_manifest(text)


def test_the_syllabus_lists_planned_lessons_until_they_exist(monkeypatch):
    done = next(lesson.number for lesson in LESSONS if lesson.number not in load_manifest().planned)
    text = MANIFEST.read_text(encoding="utf-8").replace(
        '\n[planned]\n', f'\n[planned]\n{done} = "done already"\n99 = "a lesson still to come"\n', 1)
    monkeypatch.setattr(syllabus, "load_manifest", lambda: parse_manifest(text))
    last = syllabus.table().splitlines()[-1]
    assert last.startswith("Still to come") and "done already" not in last and "99 a lesson still to come" in last
    numbers = {lesson.number for lesson in LESSONS}
    for n, title in load_manifest().planned.items():
        assert (f"{n:02d} {title}" in last) == (n not in numbers)


def test_a_failing_cell_is_reported_in_one_line_without_colour_codes():
    from utils.notebook_run import CellExecutionError, describe_cell_error

    err = CellExecutionError("Traceback ...\n\x1b[0;31mValueError\x1b[0m: bad", "ValueError", "bad \x1b[1mthing\x1b[0m")
    assert describe_cell_error(err) == "ValueError: bad thing"


def test_a_cell_past_the_time_limit_is_reported_in_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    from utils import execute_notebooks
    from utils.notebook_run import CellTimeoutError

    def timed_out(path, **kw):
        raise CellTimeoutError("A cell timed out while it was being executed, after 600 seconds.\nHere is a preview")

    monkeypatch.setattr(execute_notebooks, "execute", timed_out)
    path = LESSONS[0].path()
    before = path.read_bytes()
    assert execute_notebooks.main([str(LESSONS[0].number)]) == 1
    assert capsys.readouterr().out.strip() == (f"{path.name}: FAILED, nothing written: A cell timed out while it was "
                                               "being executed, after 600 seconds.")
    assert path.read_bytes() == before
