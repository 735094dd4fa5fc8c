"""The /docs page in a real headless Chromium: Swagger UI renders every operation, from this server alone.

Needs Debian's chromium (`apt-get install chromium`) and the playwright package; never
`playwright install`, which downloads a browser of its own. Marked `browser`: `.ci/run`
runs it after the default suite.
"""
from __future__ import annotations

import shutil
import threading
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from apps.openapi import build_document
from tests.openapi_support import operations

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic would find no network here; keep it quiet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def live_url(make_app):
    """Serve an app over real HTTP on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def page():
    """A page of a fresh headless Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page()
        browser.close()


def test_docs_show_every_operation_loaded_from_this_server_only(live_url, page):
    origins = set()
    page.on("request", lambda request: origins.add(urlsplit(request.url).netloc))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_url}/docs")
    page.wait_for_selector(".opblock", timeout=15_000)
    shown = {(block.get_attribute("class").split("opblock-")[-1].split()[0],
              block.locator(".opblock-summary-path").get_attribute("data-path"))
             for block in page.locator(".opblock").all()}
    documented = {(method, path) for path, method, _ in operations(build_document())}
    assert shown == documented
    assert origins == {urlsplit(live_url).netloc}, "the page fetched something from elsewhere"
    assert errors == []
    assert page.locator(".info .title").inner_text().startswith("Refinity API")
