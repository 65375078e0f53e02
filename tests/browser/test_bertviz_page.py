"""bertviz's HTML in a real browser, inserted the way JupyterLab 4 inserts an HTML output (innerHTML, then
each <script> re-created so it runs; a re-created <script src> loads asynchronously).

Proves what lesson 10 says: called directly, bertviz's view stays blank there ("require is not defined",
its inline script runs before require.js has loaded); through ``course.viz.show_bertviz``'s HTML it draws;
and offline the view says so in one line instead of staying silently blank. Takes a few seconds.
"""
from __future__ import annotations

import pytest
import torch
from browser_support import bertviz_scripts, need_browser, route_bertviz_cdn, skip_or_fail

from course.viz import BERTVIZ_OFFLINE_MESSAGE, patient_bertviz_html

pytestmark = pytest.mark.browser

INSERT_LIKE_JUPYTERLAB = """html => {
  const host = document.getElementById('host');
  host.innerHTML = html;
  for (const old of Array.from(host.getElementsByTagName('script'))) {
    const s = document.createElement('script');
    for (const a of old.attributes) s.setAttribute(a.name, a.value);
    s.textContent = old.textContent;
    old.parentNode.replaceChild(s, old);
  }
}"""
DRAWN = "document.querySelectorAll('svg text, svg line, svg rect').length"


@pytest.fixture(scope="module")
def bertviz_html() -> str:
    bertviz = pytest.importorskip("bertviz")
    g = torch.Generator().manual_seed(0)
    attention = tuple(torch.rand(1, 2, 5, 5, generator=g).softmax(-1) for _ in range(2))
    return bertviz.head_view(attention, ["the", "cat", "sat", "down", "."], html_action="return").data


@pytest.fixture(scope="module")
def browser():
    path = need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def _show(browser, html: str, scripts, wait_ms: int) -> tuple[int, str, list[str]]:
    """Insert ``html`` into a fresh page; return (SVG items drawn, the offline note's text, page errors)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    route_bertviz_cdn(page, scripts)
    page.set_content("<html><body><div id='host'></div></body></html>")
    page.evaluate(INSERT_LIKE_JUPYTERLAB, html)
    page.wait_for_timeout(wait_ms)
    drawn = page.evaluate(DRAWN)
    note = page.evaluate("(document.querySelector('.course-bertviz-offline') || {}).textContent || ''")
    page.close()
    return drawn, note, errors


@pytest.fixture(scope="module")
def scripts():
    found = bertviz_scripts()
    if isinstance(found, str):
        skip_or_fail(found)
    return found


def test_bertviz_called_directly_stays_blank_in_jupyterlab_style_insertion(browser, bertviz_html, scripts):
    drawn, note, errors = _show(browser, bertviz_html, scripts, wait_ms=2000)
    assert drawn == 0 and any("require is not defined" in e for e in errors), (drawn, errors)


def test_show_bertviz_html_draws_once_require_js_arrives(browser, bertviz_html, scripts):
    drawn, note, errors = _show(browser, patient_bertviz_html(bertviz_html, wait_s=10), scripts, wait_ms=3000)
    assert drawn > 10, f"nothing drawn; page errors: {errors}"
    assert not errors and note == ""


def test_show_bertviz_html_explains_itself_offline(browser, bertviz_html):
    drawn, note, errors = _show(browser, patient_bertviz_html(bertviz_html, wait_s=1), None, wait_ms=2500)
    assert drawn == 0
    assert note == BERTVIZ_OFFLINE_MESSAGE
    assert not errors
