"""Assertions shared by the checker tests (tests/checks/test_checks_*.py)."""
from course.checks.core import CheckResult


def assert_fails_with(result: CheckResult, words: str) -> None:
    """The checker failed, in one line, and the line holds ``words`` (the hint it should give)."""
    assert not result.passed, result.line
    assert words in result.line, result.line
    assert "\n" not in result.line
