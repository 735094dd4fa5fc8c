"""The study dashboard in a real headless Chromium, served over loopback HTTP and fed by the simulators.

Two participants start, save real PNG sketches and ask for generations of types 0 and 1
over HTTP, as the web client does; then the browser shows a researcher the participants,
the thumbnails (loaded, not broken), the cards in the order the participant saw them and
the step timeline drawn, and with an API_TOKEN set, the login form first. With
SCREENSHOT_DIR set, the participant's timeline is saved there as study-timeline.png
(`SCREENSHOT_DIR=docs python -m pytest -m browser tests/test_study_browser.py`).

Needs Debian's chromium and the playwright package, as tests/test_docs_browser.py says.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from core.image_store import Image
from simulators.png import render_png
from tests.helpers import PROMPTS, RAPID_TWO, TASK, Sims, body, save_body, scheme
from tests import test_docs_browser

pytestmark = pytest.mark.browser
page = test_docs_browser.page  # the fixture: a page of a fresh headless Chromium, as the docs test drives it

TOKEN = "browser-study-token"
LOADED = "Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.decode().catch(() => null); }))"


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], str]]:
    """Return `serve(app)`: the app served over real HTTP on a free loopback port, and its base URL."""
    closing = ExitStack()

    def start(app: Flask) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        closing.callback(thread.join)
        closing.callback(server.shutdown)
        return f"http://127.0.0.1:{server.server_port}"

    with closing:
        yield start


def sketch(seed: str) -> dict:
    """Return a scheme with a real PNG canvas of its own."""
    return scheme(seed, Image(render_png(640, 480, seed), "image/png").b64())


@pytest.fixture
def slow_sims(sims: Sims) -> Sims:
    """The simulators, taking a little time per call, so the step timeline has something to show."""
    sims.chat.latency = 0.05
    for sd in sims.sds:
        sd.latency = 0.1
    return sims


def run_participants(base: str) -> dict[str, list[dict]]:
    """Drive alice and bob, each in a browser of their own, through start, saves and generations over HTTP,
    as the web client does (no username in /generate); return their answers' data."""
    answers: dict[str, list[dict]] = {}
    for username, seeds in (("alice", ["a1", "a2"]), ("bob", ["b1"])):
        with requests.Session() as http:
            http.headers["User-Agent"] = f"Mozilla/5.0 ({username}'s browser)"

            def post(path: str, sent: dict) -> dict:
                response = http.post(base + path, json=sent, timeout=30)
                assert response.status_code == 200, response.text
                return response.json()["data"]

            post("/paint/start", {"username": username})
            post("/paint/save", save_body(username, rapid=[sketch(seeds[0])]))
            answers[username] = [post("/generate", body(0, RAPID_TWO, None))]
            schemes = [sketch(seed) for seed in seeds]
            post("/paint/save", save_body(username, rapid=schemes, stage="深入发散"))
            deep = {**PROMPTS[1], "designImage": schemes[-1]["canvasImage"]}  # the sketch just saved
            answers[username].append(post("/generate", body(1, deep, None)))
    return answers


def card_texts(data: dict) -> list[str]:
    """Return the texts of an answer's cards, in the order the client shows them."""
    return [item["text"] for card in data["result"] for item in card["items"] if item["text"]]


def test_a_researcher_sees_participants_sketches_cards_and_steps(make_gen_app, slow_sims, serve, page):
    base = serve(make_gen_app())
    answers = run_participants(base)
    origins = set()
    page.on("request", lambda request: origins.add(urlsplit(request.url).netloc))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{base}/docs")
    page.click("text=Study dashboard")
    assert page.locator("tr[data-username]").evaluate_all("rows => rows.map(r => r.dataset.username)") == \
        ["alice", "bob"]
    assert page.locator('tr[data-username="alice"] [data-field="type-1"]').inner_text() == "1"

    page.click("text=alice")
    page.wait_for_selector("li.event")
    page.evaluate(LOADED)
    widths = page.locator("img").evaluate_all("images => images.map(i => i.naturalWidth)")
    assert len(widths) == 1 + 2 + 2 + 1 + 3 and all(width > 0 for width in widths)  # sketches, sent, cards
    shown = page.locator(".card .item p").all_inner_texts()
    assert shown == card_texts(answers["alice"][0]) + card_texts(answers["alice"][1])
    # Whose each was, though the client never said: by its browser, then by the sketch it sent.
    summaries = page.locator("li.event .meta").all_inner_texts()
    assert [text.split("attributed by ")[-1] for text in summaries if "attributed by" in text] == ["client", "sketch"]
    if os.environ.get("SCREENSHOT_DIR"):
        Path(os.environ["SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / "study-timeline.png"), full_page=True)

    page.click("text=Generation · type 1")
    bars = page.locator("svg.bar rect.span")
    assert bars.count() >= 6
    boxes = bars.evaluate_all("rects => rects.map(r => r.getBoundingClientRect().width)")
    assert len(boxes) == bars.count() and all(width > 0 for width in boxes)
    assert page.locator(".step-detail .seed").count() == 3  # type 1 draws three scenes
    page.evaluate(LOADED)
    assert all(width > 0 for width in page.locator("img").evaluate_all("images => images.map(i => i.naturalWidth)"))
    assert origins == {urlsplit(base).netloc}, "the pages fetched something from elsewhere"
    assert errors == []


def test_with_a_token_the_dashboard_asks_for_it_first(make_gen_app, serve, page):
    base = serve(make_gen_app(API_TOKEN=TOKEN))
    run_participants(base)
    page.goto(f"{base}/study/participants/bob")
    assert urlsplit(page.url).path == "/study/login" and page.locator("tr[data-username]").count() == 0
    assert TASK not in page.content()
    page.fill("input[name=token]", "a guess")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text().startswith("That is not")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    assert urlsplit(page.url).path == "/study/participants/bob"  # where the researcher was going
    assert page.locator("li.event").count() == 4
    page.evaluate(LOADED)
    assert all(width > 0 for width in page.locator("img").evaluate_all("images => images.map(i => i.naturalWidth)"))
    page.click("text=Log out")
    page.goto(f"{base}/study")
    assert urlsplit(page.url).path == "/study/login"
