"""Every lesson opens on Colab: a set-up first cell, and a README link built from one setting."""
from __future__ import annotations

import nbformat
import pytest

from course.lessons import notebook_paths as lessons
from utils.colab import colab_url, readme_links, settings, setup_cell_source


@pytest.mark.parametrize("path", lessons(), ids=lambda p: p.name)
def test_first_cell_is_the_colab_setup_cell(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "code"
    assert first.source == setup_cell_source(), "run: python utils/colab.py --write"


def test_setup_cell_installs_from_the_configured_repository_only_on_colab():
    src = setup_cell_source()
    assert settings()["repository"] in src
    assert 'if "google.colab" in sys.modules:' in src
    compile(src, "setup-cell", "exec")


def test_setup_cell_does_nothing_here_and_prints_nothing(capsys):
    exec(setup_cell_source(), {})
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("path", lessons(), ids=lambda p: p.name)
def test_readme_links_each_lesson_to_colab(path):
    links = readme_links()
    assert path.name in links, f"README has no Open-in-Colab link for {path.name}"
    assert links[path.name] == colab_url(path)


def test_readme_links_only_to_lessons_that_exist():
    names = {p.name for p in lessons()}
    assert set(readme_links()) <= names
