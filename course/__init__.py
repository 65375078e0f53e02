"""Transformers from scratch: the pieces the lessons build, in one importable package."""
__version__ = "0.1.0"

import os as _os

# Whether nbgrader is grading this kernel, read once, when the kernel first imports the course: every
# lesson's first cell does, before any solution cell, so a solution that edits os.environ later cannot
# switch grading off (course.checks.core.strict_mode reads this).
GRADED_AT_START = bool(_os.environ.get("NBGRADER_EXECUTION"))
