"""What the browser tests share: finding Chromium, skipping (or, in CI, failing) when it or Playwright is
missing, serving bertviz's CDN scripts from a local npm copy so its views can draw offline, running
JupyterLab on a free port, and the folder that keeps the screenshots (``COURSE_SCREENSHOTS``).

In CI ``COURSE_REQUIRE_BROWSER=1`` is set: a missing browser, Playwright or npm copy then fails the test
instead of skipping it, so the browser checks cannot silently stop running.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STALE_OPACITY = 0.5  # a greyed (stale) picture or text is drawn at most this opaque (course.viz: 0.3)
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


def screenshots_dir(tmp_path_factory) -> Path:
    """Where the browser tests keep their screenshots: ``$COURSE_SCREENSHOTS`` (CI keeps that folder as an
    artefact), else a pytest temporary folder."""
    named = os.environ.get("COURSE_SCREENSHOTS")
    folder = Path(named) if named else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def strip_outputs(source: Path, target: Path) -> None:
    """The notebook as a learner starts it: no outputs and no saved widget state."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, target)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(work: Path):
    """JupyterLab serving ``work`` on a free local port (as root if need be), every cell rendered (no
    windowing, so the tests find them all), this repository on the kernels' path. Yields its URL."""
    import sys
    import time
    import urllib.request

    port = _free_port()
    settings = work / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = work / "lab-settings" / "@jupyterlab" / "apputils-extension"   # no "get notified of news?" toast
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(work / "runtime"), PYTHONPATH=str(ROOT),
               JUPYTERLAB_SETTINGS_DIR=str(work / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--allow-root", "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={work}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail("JupyterLab exited: " + server.stdout.read().decode(errors="replace")[-2000:])
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def open_notebook(page, url: str, name: str) -> None:
    """Open ``name`` in JupyterLab and wait until its kernel is idle (accepting the kernel dialog if asked)."""
    page.goto(f"{url}/lab/tree/{name}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
    except Exception:
        pass
    # JupyterLab 4 draws the kernel's indicator twice (toolbar and status bar), one of them possibly hidden:
    # wait for a visible one, or the wait can hang on the hidden one.
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']:visible", timeout=90_000)


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


# The bytes an <img> shows, as a SHA-256 digest. ipywidgets makes a new blob: URL whenever anything of the
# Image widget changes (its CSS classes too, when a picture is greyed), so the URL cannot tell pictures apart.
PICTURE_DIGEST_JS = """async el => {
  if (!el || !el.src) return "";
  const bytes = await (await fetch(el.src)).arrayBuffer();
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join("");
}"""


def picture_digest(image) -> str:
    """What an <img> locator shows, as a digest ('' when it shows nothing)."""
    return image.evaluate(PICTURE_DIGEST_JS)
