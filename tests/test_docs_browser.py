"""The documentation site in a real headless browser (Debian's Chromium, driven by Playwright), served by a plain
file server with the internet cut off: every page loads with nothing requested from another host (no fonts or
scripts from a CDN), nothing overflows a 1280 px window, a setting's name is never broken across lines, and
search finds a page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from conftest import free_port, wait_for_port

ROOT = Path(__file__).parent.parent
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built site behind `python -m http.server`: a file server, as users host it."""
    directory = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(directory)]
    subprocess.run(build, cwd=ROOT, env=env, capture_output=True, check=True, timeout=300)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, site: str) -> Iterator[tuple[Page, list[str]]]:
    """A 1280 x 800 page that may reach the site only: any other request is refused and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    elsewhere: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(site):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    yield context.new_page(), elsewhere
    context.close()


def pages() -> list[str]:
    return sorted(path.stem for path in (ROOT / "docs").glob("*.md") if path.stem != "index")


@pytest.mark.parametrize("name", ["", *pages()])
def test_every_page_loads_offline_and_fits_1280_px(page: tuple[Page, list[str]], site: str, name: str) -> None:
    tab, elsewhere = page
    response = tab.goto(f"{site}/{name}/" if name else f"{site}/", wait_until="networkidle")
    assert response is not None and response.status == 200
    assert elsewhere == []  # no font, script or stylesheet from another host
    overflow = tab.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{name or 'home'} is {overflow} px wider than a 1280 px window"


def test_names_in_the_reference_are_never_broken(page: tuple[Page, list[str]], site: str) -> None:
    tab, _ = page
    tab.goto(f"{site}/reference/", wait_until="networkidle")
    broken = tab.evaluate(
        """[...document.querySelectorAll('.md-typeset table td:first-child code')]
             .filter(code => code.getClientRects().length > 1).map(code => code.textContent)"""
    )
    assert broken == []
    assert tab.locator(".md-typeset table td:first-child code").count() > 50


def test_the_navigation_does_not_repeat_a_title(page: tuple[Page, list[str]], site: str) -> None:
    tab, _ = page
    tab.goto(f"{site}/configuration/", wait_until="networkidle")
    titles = tab.locator("nav.md-nav--primary .md-nav__link").all_inner_texts()
    assert titles.count("Configuration") == 1, titles


def test_search_finds_a_page(page: tuple[Page, list[str]], site: str) -> None:
    tab, elsewhere = page
    tab.goto(f"{site}/", wait_until="networkidle")
    search = tab.locator("input.md-search__input")
    search.click()
    search.press_sequentially("proxy", delay=20)  # keystrokes: what the search box listens to
    results = tab.locator(".md-search-result__item")
    results.first.wait_for(timeout=15_000)
    assert results.count() > 0 and elsewhere == []
    assert "proxy" in results.first.inner_text().lower()
