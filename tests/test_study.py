"""The study dashboard at /study through the Flask test client, on a real store and the simulators.

`study` drives two participants through /paint/start, /paint/save (real PNG sketches)
and /generate, as the web client would, and the tests read the pages a researcher sees:
what they list and count, in which order, and what the images, the login and the export
answer. Pages are checked through the data-* attributes and texts the templates write.
"""
from __future__ import annotations

import io
import re
import time
import zipfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import PIL.Image
import pytest
from bson import ObjectId
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient

from apps.paint.study_files import MANIFEST
from apps.records import COLLECTION
from apps.study import thumbnails
from apps.study.step_timeline import step_timeline
from core.image_store import Image, put_image
from core import security
from core.factory import close_app, create_app
from core.security import DASHBOARD_COOKIE, PASS_SECONDS
from simulators.chat import ChatSimulator
from simulators.png import render_png
from simulators.webui import SDWebUISimulator
from tests.helpers import (
    PROMPTS, RAPID_TWO, SIM_KEY, TASK, Sims, all_records, backend_settings, body, save_body, scheme,
)

TOKEN = "study-token"
RAPID, DEEP = "快速发散", "深入发散"


def sketch(seed: str, width: int = 800, height: int = 600) -> dict[str, Any]:
    """Return a scheme whose canvas is a real PNG of its own (distinct per seed)."""
    return scheme(seed, Image(render_png(width, height, seed), "image/png").b64())


@dataclass
class Study:
    """An app with two participants' saves and generations, and what the web client got back."""

    app: Flask
    db: Any
    answers: dict[str, list[dict[str, Any]]]  # username -> the /generate answers' data, in order

    def client(self):
        """Return a test client of the app."""
        return self.app.test_client()


def run_study(app: Flask, db) -> Study:
    """Drive alice (three saves, types 0 and 1) and bob (one save, type 0) as the web client would."""
    client = app.test_client()
    answers: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}

    def generate(username: str, type_: int, prompts: dict[str, Any]) -> None:
        response = client.post("/generate", json=body(type_, prompts, username))
        assert response.status_code == 200, response.get_json()
        answers[username].append(response.get_json()["data"])

    def save(username: str, **lists: Any) -> None:
        assert client.post("/paint/save", json=save_body(username, **lists)).status_code == 200

    for username in ("alice", "bob"):
        assert client.post("/paint/start", json={"username": username}).status_code == 200
    save("alice", rapid=[sketch("a1")])
    generate("alice", 0, RAPID_TWO)
    save("alice", rapid=[sketch("a1"), sketch("a2")])
    save("alice", rapid=[sketch("a1-redrawn"), sketch("a2")], deep=[sketch("d1")], stage=DEEP)
    generate("alice", 1, PROMPTS[1])
    save("bob", rapid=[sketch("b1", 300, 200)])
    generate("bob", 0, RAPID_TWO)
    return Study(app, db, answers)


@pytest.fixture(scope="module")
def study(mongo_uri, tmp_path_factory) -> Iterator[Study]:
    """The dashboard's app with alice's and bob's study in it, no API_TOKEN set: one for the module's readers.

    Built here rather than with make_gen_app, whose simulators live for one test: the study
    is made once, and tests that add to it use `own_study`.
    """
    with ExitStack() as closing:
        chat = closing.enter_context(ChatSimulator(api_key=SIM_KEY))
        sds = []
        for _ in range(2):
            sds.append(SDWebUISimulator().start())
            closing.callback(sds[-1].stop)
        app = create_app({"TESTING": True, "MONGO_URI": mongo_uri, "MONGO_DB": f"test_{uuid.uuid4().hex[:12]}",
                          "MONGO_TIMEOUT_MS": 2000, "DATA_DIR": str(tmp_path_factory.mktemp("study") / "var"),
                          **backend_settings(Sims(chat, sds))}, env={})
        closing.callback(close_app, app)
        direct = closing.enter_context(MongoClient(mongo_uri, serverSelectionTimeoutMS=3000))
        yield run_study(app, direct[app.config["MONGO_DB"]])


@pytest.fixture
def own_study(gen_app, gen_db) -> Study:
    """A study of alice and bob for one test, which may add to it."""
    return run_study(gen_app, gen_db)


def page(client, path: str, status: int = 200) -> str:
    """GET a dashboard page and return its HTML, checking its status and media type."""
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def row_of(html: str, username: str) -> dict[str, str]:
    """Return the data-field cells of a participant's row in the overview."""
    row = re.search(rf'<tr data-username="{username}">(.*?)</tr>', html, re.S).group(1)
    return {name: re.sub(r"<[^>]+>", " ", cell).split()[0] if name != "attribution" else re.sub(r"<[^>]+>", " ", cell)
            for name, cell in re.findall(r'data-field="([^"]+)">(.*?)</td>', row, re.S)}


def kinds(html: str) -> list[str]:
    """Return the kinds of the timeline's events in order (save, generation), with their revision or type."""
    return [f"{kind}:{number}" for kind, number in
            re.findall(r'data-kind="(save|generation)" data-(?:revision|type)="(\d+)"', html)]


def card_texts(data: dict[str, Any]) -> list[str]:
    """Return the texts of an answer's cards, in the order the client shows them."""
    return [item["text"] for card in data["result"] for item in card["items"] if item["text"]]


# -- the pages -----------------------------------------------------------------------------
def test_the_participants_are_listed_with_their_counts(study):
    html = page(study.client(), "/study")
    alice, bob = row_of(html, "alice"), row_of(html, "bob")
    assert (alice["saves"], alice["sketches"], alice["type-0"], alice["type-1"], alice["type-2"]) == \
        ("3", "3", "1", "1", "0")
    assert (bob["saves"], bob["sketches"], bob["type-0"], bob["type-1"]) == ("1", "1", "1", "0")
    assert "2 attributed" in alice["attribution"] and "username: 2" in alice["attribution"]
    assert 'href="/study/participants/alice"' in html and 'href="/study/participants/bob"' in html
    assert re.search(r'data-field="unattributed">[^<]*:\s*0\s*</p>', html)


def test_the_timeline_shows_saves_and_generations_in_time_order(study):
    html = page(study.client(), "/study/participants/alice")
    assert kinds(html) == ["save:1", "generation:0", "save:2", "save:3", "generation:1"]
    first, second = study.answers["alice"]
    shown = html.index
    texts = card_texts(first) + card_texts(second)
    assert [shown(text) for text in texts] == sorted(shown(text) for text in texts)  # the cards in order
    # Every sketch of every save, by its canvas's own hash, and the cards' images.
    # Save 1, type 0's cards, saves 2 and 3, the sketch type 1 was sent and its cards.
    assert html.count("/study/thumbnails/") == 1 + 2 + 2 + 3 + 1 + 3
    assert html.count('class="sketch changed"') == 1 + 1 + 2  # new at a position, or redrawn there


@pytest.mark.parametrize("query, expected", [
    ("stage=快速发散", ["save:1", "generation:0", "save:2"]),
    ("stage=深入发散", ["save:3", "generation:1"]),
    ("type=0", ["generation:0"]),
    ("type=1&stage=深入发散", ["generation:1"]),
    ("type=2", []),
])
def test_the_timeline_filters_by_stage_and_type(study, query, expected):
    assert kinds(page(study.client(), f"/study/participants/alice?{query}")) == expected


@pytest.mark.parametrize("path, status", [
    ("/study/participants/alice?type=7", 400), ("/study/participants/alice?stage=nope", 400),
    ("/study/participants/alice?sort=x", 400), ("/study/participants/nobody", 404),
    ("/study/participants/alice/schemes/准备/0", 404), ("/study/generations/nope", 400),
    ("/study/generations/" + "0" * 24, 404), ("/study/thumbnails/xyz", 400), ("/study/images/" + "a" * 64, 404),
    ("/study/thumbnails/" + "a" * 64, 404), ("/study/export.zip?username=", 400),
    ("/study/export.zip?username=nobody", 404),
])
def test_bad_requests_are_plain_pages_never_5xx(study, path, status):
    assert "<h1>" in page(study.client(), path, status)


def test_a_schemes_history_shows_each_save_that_changed_it(study):
    client = study.client()
    first = page(client, f"/study/participants/alice/schemes/{RAPID}/0")
    assert re.findall(r'data-revision="(\d+)"', first) == ["1", "3"] and first.count("/study/thumbnails/") == 2
    assert re.findall(r'data-revision="(\d+)"', page(client, f"/study/participants/alice/schemes/{RAPID}/1")) == ["2"]
    assert re.findall(r'data-revision="(\d+)"', page(client, f"/study/participants/alice/schemes/{RAPID}/5")) == []


def test_the_generation_page_shows_every_step(study):
    record = next(record for record in all_records(study.db) if record["type"] == 1)
    html = page(study.client(), f"/study/generations/{record['_id']}")
    assert html.count('<svg class="bar"') == len(record["steps"])
    widths = re.findall(r'<rect class="span[^"]*" x="[^"]+" y="1" width="([^"]+)"', html)
    assert len(widths) == len(record["steps"]) and all(float(width) > 0 for width in widths)
    assert 'href="/study/participants/alice"' in html
    escaped = unescape(html)
    for step in record["steps"]:
        if step["kind"] == "llm":
            assert step["prompt"] in escaped and step["raw"] in escaped
            assert all(f"<li>{item}</li>" in escaped for item in step["items"])
        else:
            assert step["instance"] in html and f"{step['queueWait']:.3f} s" in html
            assert f'<dd class="seed">{step["info"]["seed"]}</dd>' in html
            assert step["payload"]["prompt"] in escaped
    texts = card_texts(study.answers["alice"][1])
    assert [escaped.rindex(text) for text in texts] == sorted(escaped.rindex(text) for text in texts)


def test_thumbnails_are_small_images_kept_on_disk_and_cached_by_the_browser(study):
    client = study.client()
    key = re.search(r"/study/thumbnails/([0-9a-f]{64})", page(client, "/study/participants/alice")).group(1)
    answer = client.get(f"/study/thumbnails/{key}")
    assert answer.status_code == 200 and answer.mimetype == thumbnails.CONTENT_TYPE
    assert "immutable" in answer.headers["Cache-Control"] and answer.headers["X-Content-Type-Options"] == "nosniff"
    with PIL.Image.open(io.BytesIO(answer.data)) as picture:
        assert 0 < max(picture.size) <= thumbnails.SIZE
    kept = list((Path(study.app.config["DATA_DIR"]) / thumbnails.DIRECTORY).rglob(f"{key}-*.webp"))
    assert len(kept) == 1 and kept[0].read_bytes() == answer.data
    again = client.get(f"/study/thumbnails/{key}", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    whole = client.get(f"/study/images/{key}")
    assert whole.status_code == 200 and whole.mimetype == "image/png" and len(whole.data) > len(answer.data)


def test_blobs_that_are_no_images_are_refused(study):
    text = put_image(study.db, Image(b"<html><script>alert(1)</script></html>", "text/html"))
    fake = put_image(study.db, Image(b"\x89PNG\r\n\x1a\n" + b"broken" * 10, "image/png"))
    client = study.client()
    for path in (f"/study/thumbnails/{text}", f"/study/images/{text}", f"/study/thumbnails/{fake}"):
        assert "<h1>415</h1>" in page(client, path, 415)


def test_generations_are_read_by_their_participant_field_and_the_unattributed_counted(own_study):
    study = own_study
    record = all_records(study.db)[-1]  # bob's
    for method, username in (("sketch", "alice"), ("texts", "alice"), ("ambiguous", None), ("none", None)):
        study.db[COLLECTION].insert_one({**record, "_id": ObjectId(), "username": None, "participant": {
            "username": username, "method": method, "evidence": [], "candidates": ["alice", "bob"]}})
    # A record whose body named bob but whose attribution says alice is alice's.
    study.db[COLLECTION].insert_one({**record, "_id": ObjectId(), "participant": {
        "username": "alice", "method": "manual", "evidence": [], "candidates": []}})
    html = page(study.client(), "/study")
    alice = row_of(html, "alice")
    assert "5 attributed" in alice["attribution"] and row_of(html, "bob")["type-0"] == "1"
    assert all(f"{method}: 1" in alice["attribution"] for method in ("sketch", "texts", "manual"))
    assert re.search(r'data-field="unattributed">[^<]*2 · ambiguous: 1 · none: 1', html)
    assert kinds(page(study.client(), "/study/participants/alice?type=0")) == ["generation:0"] * 4


def test_a_username_with_a_slash_has_its_pages(make_app):
    client = make_app().test_client()
    assert client.post("/paint/start", json={"username": "team/7"}).status_code == 200
    assert client.post("/paint/save", json=save_body("team/7", rapid=[sketch("t")])).status_code == 200
    html = page(client, "/study")
    assert 'href="/study/participants/team/7"' in html
    assert kinds(page(client, "/study/participants/team/7")) == ["save:1"]
    assert "data-revision" in page(client, f"/study/participants/team/7/schemes/{RAPID}/0")


def test_the_docs_page_links_to_the_dashboard(client):
    assert 'href="/study"' in client.get("/docs").get_data(as_text=True)


# -- the export ----------------------------------------------------------------------------
@pytest.mark.parametrize("query, username, participants", [("", None, 2), ("?username=alice", "alice", 1)])
def test_the_export_is_a_zip_with_its_manifest(study, query, username, participants):
    with study.client().get(f"/study/export.zip{query}") as response:
        assert response.status_code == 200 and response.mimetype == "application/zip"
        assert "attachment" in response.headers["Content-Disposition"]
        data = response.get_data()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = archive.read(MANIFEST).decode()
    assert f'"username": {"null" if username is None else chr(34) + username + chr(34)}' in manifest
    assert f'"participants": {participants}' in manifest
    assert not list(Path(study.app.config["DATA_DIR"]).glob("study-export-*"))  # nothing left behind


# -- the login -----------------------------------------------------------------------------
@pytest.fixture
def guarded(make_app) -> FlaskClient:
    """A client of an app with an API_TOKEN, where alice and bob saved a sketch each."""
    client = make_app(API_TOKEN=TOKEN).test_client()
    for username in ("alice", "bob"):
        assert client.post("/paint/start", json={"username": username}).status_code == 200
        assert client.post("/paint/save", json=save_body(username, rapid=[sketch(username)])).status_code == 200
    return client


def test_without_the_pass_every_page_leads_to_the_login_form_and_shows_nothing(guarded):
    client = guarded
    for path in ("/study", "/study/participants/alice", "/study/export.zip", "/study/thumbnails/" + "a" * 64):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["Location"].startswith("/study/login?next=/study")
        assert b"bob" not in response.data and TASK.encode() not in response.data
    form = page(client, "/study/login?next=/study/participants/alice")
    assert 'name="token"' in form and 'value="/study/participants/alice"' in form and "alice</" not in form


def test_the_right_token_gives_an_httponly_pass_that_opens_the_pages(guarded):
    client = guarded
    wrong = client.post("/study/login", data={"token": "guess", "next": "/study"})
    assert wrong.status_code == 422 and "Set-Cookie" not in wrong.headers
    signed = client.post("/study/login", data={"token": TOKEN, "next": "/study/participants/bob"})
    assert signed.status_code == 303 and signed.headers["Location"] == "/study/participants/bob"
    cookie = signed.headers["Set-Cookie"]
    assert cookie.startswith(f"{DASHBOARD_COOKIE}=") and TOKEN not in cookie
    assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/study")) and "Secure" not in cookie
    assert kinds(page(client, "/study/participants/bob")) == ["save:1"]
    assert client.get("/generations").status_code == 401  # the pass opens the dashboard only
    out = client.post("/study/logout")
    assert out.status_code == 303 and f"{DASHBOARD_COOKIE}=;" in out.headers["Set-Cookie"]
    assert client.get("/study").status_code == 303


def test_the_pass_is_secure_over_https_and_the_login_goes_nowhere_else(guarded):
    client = guarded
    signed = client.post("/study/login", base_url="https://localhost",
                         data={"token": TOKEN, "next": "https://elsewhere.example/study"})
    assert "Secure" in signed.headers["Set-Cookie"] and signed.headers["Location"] == "/study"
    assert client.post("/study/login", data={"token": TOKEN, "next": "//elsewhere.example/study"}) \
        .headers["Location"] == "/study"


def test_a_bearer_token_opens_the_pages_and_an_old_pass_does_not(guarded, monkeypatch):
    client = guarded
    assert client.get("/study", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.post("/study/login", data={"token": TOKEN}).status_code == 303
    assert client.get("/study").status_code == 200
    later = time.time() + PASS_SECONDS + 60
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: later, monotonic=time.monotonic))
    assert client.get("/study").status_code == 303


def test_without_a_token_the_dashboard_answers_this_machine_only(study):
    client = study.client()
    assert client.get("/study", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 403
    assert client.get("/study/login").headers["Location"] == "/study"  # no login to do


def test_retries_failures_waits_and_untimed_steps_are_marked_on_the_timeline():
    record = {"durationMs": 2000, "steps": [
        {"kind": "llm", "step": "s.names", "attempt": 1, "error": "count: 2 items", "started": 0.0, "finished": 0.5},
        {"kind": "llm", "step": "s.names", "attempt": 2, "reason": "correction", "error": None,
         "started": 0.5, "finished": 1.0, "latency": 0.5},
        {"kind": "image", "step": "s.images[0]", "queueWait": 0.5, "attempts": 2, "error": "instance down",
         "started": 1.0, "finished": 2.0},
        {"kind": "llm", "step": "s.old", "latency": 0.2},  # a record from before steps were timed
    ]}
    drawn = step_timeline(record)
    assert [bar.state for bar in drawn.bars] == ["retried", "ok", "failed", "ok"]
    assert [(bar.left, bar.width, bar.wait) for bar in drawn.bars] == \
        [(0.0, 25.0, 0.0), (25.0, 25.0, 0.0), (50.0, 50.0, 25.0), (None, None, 0.0)]
    assert "attempt 2 (correction)" in drawn.bars[1].note and "2 attempts" in drawn.bars[2].note
