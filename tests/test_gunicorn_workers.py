"""How many worker processes the production server starts, and what it refuses before any.

Several run only on a shared Redis: without REDIS_URL each worker would keep its own SD pool
and stack its jobs on every WebUI instance, so gunicorn must refuse to start, saying why,
however the number is given; with it, it starts them all. A setting gunicorn.conf.py cannot
read stops it the same way, in one line that names it.
"""
from __future__ import annotations

import json
import uuid

import pytest
import redis

from tests.helpers import answers_ping, save_body, wait_until
from tests.production_server import Gunicorn, serving


def refused(args: tuple[str, ...] = (), **settings: str) -> str:
    """Start the production server, expect it to exit non-zero within seconds, and return its stderr."""
    server = Gunicorn(args, **settings)
    try:
        assert server.process.wait(15) != 0
    finally:
        server.close()
    return "".join(server.err)


@pytest.mark.parametrize("args, settings", [((), {"WEB_CONCURRENCY": "2"}), (("-w", "2"), {})],
                         ids=["WEB_CONCURRENCY", "-w"])
def test_several_workers_without_redis_refuse_to_start(args, settings):
    said = refused(args, **settings)
    assert "2 worker processes need REDIS_URL" in said and "Traceback" not in said


def test_a_setting_it_cannot_read_stops_it_in_one_line():
    assert refused(GPT_MAX_CONCURRENCY="many") == "gunicorn.conf.py: GPT_MAX_CONCURRENCY must be an integer, got 'many'\n"


def test_several_workers_on_one_redis_start_and_serve(mongo_uri, redis_url, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    with serving(WEB_CONCURRENCY="2", REDIS_URL=redis_url, REDIS_PREFIX=prefix, MONGO_URI=mongo_uri,
                 MONGO_DB=f"workers_{uuid.uuid4().hex[:12]}", DATA_DIR=str(tmp_path / "var")) as server:
        assert answers_ping(f"http://127.0.0.1:{server.port}")
        wait_until(lambda: len(server.workers()) == 2, 30, "two workers")
        # Each worker's app marks its process alive in the one Redis: both share through it.
        client = redis.Redis.from_url(redis_url)
        try:
            wait_until(lambda: len(client.keys(f"{prefix}process:*")) == 2, 30, "both workers in Redis")
        finally:
            client.close()


def test_a_participants_later_save_on_another_worker_stays_current(mongo_uri, redis_url, tmp_path):
    """Saves are ordered by when they arrived on the deployment's clock, not by a count of one worker's requests."""
    with serving(WEB_CONCURRENCY="2", REDIS_URL=redis_url, REDIS_PREFIX=f"test-{uuid.uuid4().hex[:12]}:",
                 MONGO_URI=mongo_uri, MONGO_DB=f"workers_{uuid.uuid4().hex[:12]}",
                 DATA_DIR=str(tmp_path / "var")) as server:
        workers = wait_until(lambda: len(server.workers()) == 2 and server.workers(), 30, "two workers")
        (a, _), (b, _) = server.connections_to_each(workers, 1)

        def call(connection, path, body):
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        try:
            assert call(b, "/paint/start", {"username": "bea"})[0] == 200
            assert call(b, "/paint/save", save_body("bea", task="b's"))[0] == 200
            for _ in range(30):  # worker A serves many more requests than worker B
                call(a, "/paint/start", {"username": "ann"})
            assert call(a, "/paint/save", save_body("cai", task="first"))[0] == 404  # not started: refused
            assert call(a, "/paint/start", {"username": "cai"})[0] == 200
            assert call(a, "/paint/save", save_body("cai", task="first"))[0] == 200
            assert call(b, "/paint/save", save_body("cai", task="second"))[0] == 200  # sent once the first was answered
            for connection in (a, b):
                assert call(connection, "/paint/start", {"username": "cai"})[1]["data"]["designTask"] == "second"
        finally:
            a.close()
            b.close()
