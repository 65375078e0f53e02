"""Maintainer and teacher tools, run from the command line (see CONTRIBUTING.md)."""
from __future__ import annotations

import sys
from collections.abc import Callable


def run_cli(main: Callable[[], int]) -> int:
    """Run a tool's ``main``; a malformed manifest or an unknown lesson ends in one line and exit code 2,
    not a traceback."""
    from course.lessons import ManifestError

    try:
        return main()
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
