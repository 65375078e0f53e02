"""The lesson manifest (``course/lessons.toml``): what the course's lessons are, read in one place.

    >>> from course.lessons import lessons
    >>> [lesson.notebook for lesson in lessons()][:2]
    ['00_setup.ipynb', '01_why_attention.ipynb']

Everything that lists lessons asks this module: the README's syllabus table, nbval's collection, the
bench, the student build, the hygiene tests, the Colab cell writer. A malformed manifest raises
:class:`ManifestError` naming the lesson and the field. Measured run times are written back into the
manifest by :func:`record_run_times` (the bench and the notebook executor call it), never by hand.
"""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Colab); tomli is pip's own vendored copy there too
    import tomli as tomllib

__all__ = ["MANIFEST", "NOTEBOOKS", "Lesson", "Manifest", "ManifestError", "load_manifest", "lessons",
           "notebook_paths", "lesson_for", "record_run_times"]

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "lessons.toml"
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK_NAME = re.compile(r"(\d\d)_([a-z][a-z0-9_]*)\.ipynb")
SLUG = re.compile(r"[a-z][a-z0-9_]*")
_FIELDS = {"number": int, "slug": str, "title": str, "builds": str, "part": int, "modules": list,
           "checks": str, "budget_s": (int, float), "extras": list, "gpu": bool}
_OPTIONAL = {"measured_s": (int, float)}


class ManifestError(ValueError):
    """The lesson manifest is malformed; the message names the lesson and the field."""


@dataclass(frozen=True)
class Lesson:
    """One entry of the manifest. ``notebook`` is its file name, ``path`` where it lies in a checkout."""

    number: int
    slug: str
    title: str
    builds: str
    part: int
    modules: tuple[str, ...]
    checks: str
    budget_s: float
    extras: tuple[str, ...]
    gpu: bool
    measured_s: float | None = None

    @property
    def name(self) -> str:
        """``"03_self_attention"``: the notebook's name without its suffix."""
        return f"{self.number:02d}_{self.slug}"

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def label(self) -> str:
        """``"03 self-attention"``: how the README and the notebook's title name the lesson."""
        return f"{self.number:02d} {self.title}"

    def path(self, folder: Path = NOTEBOOKS) -> Path:
        return Path(folder) / self.notebook


@dataclass(frozen=True)
class Manifest:
    lessons: tuple[Lesson, ...]
    budget_s: float
    parts: dict[int, str]
    extras: dict[str, str]
    planned: dict[int, str]

    def by_notebook(self) -> dict[str, Lesson]:
        return {lesson.notebook: lesson for lesson in self.lessons}


def _lesson(entry: dict, index: int, extras: dict[str, str], parts: dict[int, str], cap: float) -> Lesson:
    where = f"lesson {entry.get('slug', f'#{index + 1}')!s}"
    unknown = sorted(set(entry) - set(_FIELDS) - set(_OPTIONAL))
    for field, kind in _FIELDS.items():
        if field not in entry:
            typo = difflib.get_close_matches(field, unknown, n=1)
            raise ManifestError(f"{where}: missing field '{field}'" + (f" (is '{typo[0]}' a typo?)" if typo else ""))
        if not isinstance(entry[field], kind) or (kind is int and isinstance(entry[field], bool)):
            raise ManifestError(f"{where}: '{field}' has the wrong type ({type(entry[field]).__name__})")
    for field, kind in _OPTIONAL.items():
        if field in entry and not isinstance(entry[field], kind):
            raise ManifestError(f"{where}: '{field}' has the wrong type ({type(entry[field]).__name__})")
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if not SLUG.fullmatch(entry["slug"]):
        raise ManifestError(f"{where}: slug must be lower-case letters, digits and underscores, starting with a letter")
    if not 0 <= entry["number"] <= 99:
        raise ManifestError(f"{where}: number must be 0-99")
    if entry["part"] not in parts:
        raise ManifestError(f"{where}: part {entry['part']} is not one of {sorted(parts)}")
    bad = [x for x in entry["extras"] if x not in extras]
    if bad:
        raise ManifestError(f"{where}: unknown extra(s) {', '.join(bad)}; known: {', '.join(extras)}")
    if not 0 < entry["budget_s"] <= cap:
        raise ManifestError(f"{where}: budget_s must be between 0 and the course's {cap:g} s")
    for module in [*entry["modules"], entry["checks"]]:
        if not re.fullmatch(r"course(\.[a-z_][a-z0-9_]*)+", module):
            raise ManifestError(f"{where}: {module!r} is not a course module name (course.something)")
    if not entry["checks"].startswith("course.checks."):
        raise ManifestError(f"{where}: checks must name a module in course.checks, got {entry['checks']!r}")
    return Lesson(number=entry["number"], slug=entry["slug"], title=entry["title"], builds=entry["builds"],
                  part=entry["part"], modules=tuple(entry["modules"]), checks=entry["checks"],
                  budget_s=float(entry["budget_s"]), extras=tuple(entry["extras"]), gpu=entry["gpu"],
                  measured_s=None if "measured_s" not in entry else float(entry["measured_s"]))


def parse_manifest(text: str) -> Manifest:
    """Read and validate the manifest's TOML text; raise :class:`ManifestError` on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"lessons.toml is not valid TOML: {err}") from None
    try:
        cap = float(data["course"]["budget_s"])
        parts = {int(k): v for k, v in data["parts"].items()}
        extras = {k: v["what"] for k, v in data.get("extras", {}).items()}
        planned = {int(k): v for k, v in data.get("planned", {}).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"lessons.toml needs [course] budget_s, [parts], [extras.NAME] what = ... and "
                            f"[planned] with lesson numbers as keys: {err}") from None
    found = tuple(_lesson(entry, i, extras, parts, cap) for i, entry in enumerate(data.get("lesson", [])))
    for field in ("number", "slug"):
        values = [getattr(lesson, field) for lesson in found]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ManifestError(f"two lessons share the {field} {repeated[0]!r}")
    if [lesson.number for lesson in found] != sorted(lesson.number for lesson in found):
        raise ManifestError("lessons must be listed in number order")
    return Manifest(found, cap, parts, extras, planned)


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> Manifest:
    return parse_manifest(path.read_text(encoding="utf-8"))


def load_manifest(path: Path = MANIFEST) -> Manifest:
    """The manifest at ``path`` (re-read whenever the file changes)."""
    path = Path(path)
    return _load(path, path.stat().st_mtime_ns)


def lessons(path: Path = MANIFEST) -> tuple[Lesson, ...]:
    """Every lesson, in order."""
    return load_manifest(path).lessons


def notebook_paths(folder: Path = NOTEBOOKS, path: Path = MANIFEST) -> list[Path]:
    """Every lesson's notebook in ``folder`` (the repository's notebooks/ by default), in order."""
    return [lesson.path(folder) for lesson in lessons(path)]


def lesson_for(notebook: Path | str, path: Path = MANIFEST) -> Lesson:
    """The lesson named by ``notebook``: its notebook's path or file name, its number (``"12"``), its name
    (``"12_modern_llm"``) or its slug (``"modern_llm"``); ManifestError, saying so in one line, if none is."""
    text = str(notebook)
    for lesson in lessons(path):
        if Path(text).name in {lesson.notebook, lesson.name, lesson.slug} or (text.isdigit() and int(text) == lesson.number):
            return lesson
    raise ManifestError(f"{Path(text).name} is not a lesson in course/lessons.toml (name one by its notebook, number or "
                        "slug; python utils/new_lesson.py writes the entry for a new lesson)")


def record_run_times(times: dict[str, float], path: Path = MANIFEST) -> None:
    """Write measured run times (notebook file name -> seconds) into the manifest's ``measured_s`` lines.

    Only those lines change; comments and layout stay as they are. A name that is not a lesson raises.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    known = load_manifest(path).by_notebook()
    blocks = re.split(r"(?m)^(?=\[\[lesson\]\])", text)
    for name, seconds in times.items():
        if name not in known:
            raise ManifestError(f"{name} is not a lesson in course/lessons.toml")
        slug = known[name].slug
        for i, block in enumerate(blocks):
            if re.search(rf'(?m)^slug\s*=\s*"{re.escape(slug)}"\s*$', block):
                line = f"measured_s = {seconds:.0f}"
                if re.search(r"(?m)^measured_s\s*=.*$", block):
                    block = re.sub(r"(?m)^measured_s\s*=.*$", line, block)
                else:
                    block = block.rstrip("\n") + f"\n{line}\n" + ("\n" if block.endswith("\n\n") else "")
                blocks[i] = block
    path.write_text("".join(blocks), encoding="utf-8")
    parse_manifest(path.read_text(encoding="utf-8"))  # still valid
