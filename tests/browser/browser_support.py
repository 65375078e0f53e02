"""What the browser tests share: finding Chromium, skipping (or, in CI, failing) when it or Playwright is
missing, and serving bertviz's CDN scripts from a local npm copy so its views can draw offline.

In CI ``COURSE_REQUIRE_BROWSER=1`` is set: a missing browser, Playwright or npm copy then fails the test
instead of skipping it, so the browser checks cannot silently stop running.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
JS_CACHE = ROOT / ".cache" / "bertviz-js"
CDN_FILES = {  # the file names bertviz asks cdnjs for -> (npm package, file in it)
    "require.min.js": ("requirejs", "require.js"),
    "d3.min.js": ("d3", "dist/d3.min.js"),
    "jquery.min.js": ("jquery", "dist/jquery.min.js"),
}
NPM_PACKAGES = ["requirejs@2.3.6", "d3@5.7.0", "jquery@3.7.1"]


def required() -> bool:
    return os.environ.get("COURSE_REQUIRE_BROWSER") == "1"


def skip_or_fail(why: str) -> None:
    """Skip with ``why``; fail instead where CI requires the browser tests to run."""
    if required():
        pytest.fail(f"COURSE_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def need_browser() -> str:
    """Path to Chromium, after checking Playwright imports; skips (or fails in CI) otherwise."""
    if importlib.util.find_spec("playwright") is None:
        skip_or_fail("pip install playwright (the Python package; no browser download needed)")
    found = chromium()
    if found is None:
        skip_or_fail("Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")
    return found


def bertviz_scripts() -> dict[str, Path] | str:
    """Local copies of bertviz's CDN scripts (installed once with npm into .cache/), or why there are none.

    Two test workers may ask at once: an exclusive lock on .cache/bertviz-js/.lock (where the platform has
    fcntl) makes the second wait for the first's install instead of writing into the same folder.
    """
    files = {name: JS_CACHE / "node_modules" / pkg / rel for name, (pkg, rel) in CDN_FILES.items()}
    npm = shutil.which("npm")
    if npm is None and not all(p.is_file() for p in files.values()):
        return "npm is not installed: cannot serve bertviz's CDN scripts locally"
    JS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(JS_CACHE / ".lock", "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock; the browser tests are meant for Linux CI anyway
            pass
        if all(p.is_file() for p in files.values()):
            return files
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(JS_CACHE), *NPM_PACKAGES],
                              capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not all(p.is_file() for p in files.values()):
        return f"npm install failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return files


def route_bertviz_cdn(page, scripts: dict[str, Path] | None) -> None:
    """Answer the page's requests to cdnjs with the local copies, or, with ``scripts=None``, refuse them
    all (the page is then as offline as a learner without internet)."""
    def serve(route):
        name = route.request.url.rsplit("/", 1)[-1].split("?")[0]
        name = name if name.endswith(".js") else name + ".js"  # require.js asks for 'd3.min' -> d3.min.js
        path = (scripts or {}).get(name)
        if path is None:
            route.abort()
        else:
            route.fulfill(path=str(path), content_type="application/javascript")
    page.route("**/cdnjs.cloudflare.com/**", serve)
