"""Progress bars that render as widgets in notebooks and as text in terminals and CI logs."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kw) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm.auto bar; silent when ``COURSE_NO_PROGRESS=1`` (tests, nbval)."""
    disable = os.environ.get("COURSE_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, **kw)
