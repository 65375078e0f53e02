"""Real text that is already on every machine: the source of a few Python standard-library modules.

The course must run offline, so its first corpus is Python's own library source, read through the
import system (``importlib``), never through a file path, so nothing a lesson prints shows where
Python is installed.

The modules were chosen because their source is byte-for-byte identical in CPython 3.10, 3.11,
3.12 and 3.13: the corpus, and everything trained on it (byte-pair merges, compression ratios,
losses), comes out the same on every supported Python. :func:`corpus_fingerprint` gives a short
digest a lesson can print, so a learner can see at a glance whether their corpus is the reference
one.

    >>> text = stdlib_corpus()
    >>> train, val = train_val_split(text, val_fraction=0.1)
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import unicodedata
from collections.abc import Sequence
from typing import TypeVar

# Largest first. Together about 214,000 characters of English docstrings, comments and Python code.
STDLIB_MODULES: tuple[str, ...] = (
    "difflib",
    "optparse",
    "tracemalloc",
    "_markupbase",
    "pyclbr",
    "py_compile",
    "_threading_local",
    "_py_abc",
    "_compression",
)

# corpus_fingerprint(stdlib_corpus()) on CPython 3.10, 3.11, 3.12 and 3.13 (checked on each).
REFERENCE_FINGERPRINT = "cd4208c8cdc3"

_SEPARATOR = "\n\n"


def _module_source(name: str) -> str:
    """The source text of a standard-library module, found by the import system (no paths exposed)."""
    spec = importlib.util.find_spec(name)
    source = None
    if spec is not None and spec.loader is not None and hasattr(spec.loader, "get_source"):
        try:
            source = spec.loader.get_source(name)
        except (ImportError, OSError):
            source = None
    if source is None:
        # Some builds ship only compiled files; the docstrings still exist in the imported module.
        # The text then differs from the reference corpus (the fingerprint shows it).
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for _, member in sorted(vars(module).items()):
            if getattr(member, "__module__", None) == name:
                parts.append(inspect.getdoc(member) or "")
        source = "\n\n".join(p for p in parts if p)
    return source


def normalise(text: str) -> str:
    """Make text the same on every platform: Unicode NFC, ``\\n`` line ends, tabs expanded,
    no trailing spaces, at most two blank lines in a row, one final newline."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.expandtabs(4).rstrip() for line in text.split("\n")]
    out: list[str] = []
    blanks = 0
    for line in lines:
        blanks = blanks + 1 if not line else 0
        if blanks <= 2:
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def stdlib_corpus(max_chars: int | None = None, modules: Sequence[str] = STDLIB_MODULES) -> str:
    """Return the normalised source of ``modules``, each headed by ``# module: <name>``.

    ``max_chars`` keeps only the first that many characters (``None``: all of it, about 214k).
    Deterministic: the same string on every run and, for the default modules, on every CPython
    from 3.10 to 3.13. Raises ``ValueError`` for a non-positive ``max_chars`` or an unknown module.
    """
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be positive or None, got {max_chars}")
    pieces = []
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"no standard-library module named {name!r} in this Python")
        pieces.append(f"# module: {name}\n" + normalise(_module_source(name)))
    text = _SEPARATOR.join(pieces)
    return text if max_chars is None else text[:max_chars]


def corpus_fingerprint(text: str) -> str:
    """First 12 hex digits of the SHA-256 of ``text`` (UTF-8): equal digests mean equal corpora."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


S = TypeVar("S", str, list, tuple)


def train_val_split(text: S, val_fraction: float = 0.1) -> tuple[S, S]:
    """Split a sequence (a string, or a list or 1-D tensor of token ids) into (train, val).

    The split is contiguous, not shuffled: the last ``val_fraction`` of the sequence is held out,
    so validation text is text the model never saw, not interleaved snippets of it.
    ``len(val) == round(len(text) * val_fraction)``; both parts are non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    n_val = round(len(text) * val_fraction)
    if n_val == 0 or n_val == len(text):
        raise ValueError(
            f"a sequence of length {len(text)} is too short to split with val_fraction={val_fraction}"
        )
    cut = len(text) - n_val
    return text[:cut], text[cut:]
