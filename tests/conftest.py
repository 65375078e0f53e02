"""Fixtures for the unit tests (the repository's root conftest.py sets up the whole run)."""
import pytest


@pytest.fixture
def lenient_checks(monkeypatch):
    """Checkers return their result instead of raising (the suite turns strict mode on), so a test
    can read the line a learner would see."""
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
