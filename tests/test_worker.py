"""core.worker under gunicorn: requests read whole on the event loop, within the body memory budget.

One production server (`gunicorn -c gunicorn.conf.py app:app`) for the module, with two
threads, a 2 s read timeout and an 8 MB body budget, on the session's store.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from gunicorn.config import Config
from gunicorn.errors import ConfigError

from core.request_body import RETRY_AFTER
from core.worker import BufferedThreadWorker
from tests.helpers import save_body, scheme
from tests.production_server import serving
from tests.raw_http import Connection, json_request, request_head

MB = 1024 * 1024
THREADS = 2
READ_TIMEOUT = 2
BUDGET = 8 * MB
SAVE_MAX = 5 * MB  # above half the budget, so some saves the route takes can never fit in it
JSON = "application/json"


@pytest.fixture(scope="module")
def port(mongo_uri, tmp_path_factory) -> Iterator[int]:
    """Run the production server for the module and return its port."""
    with serving(MONGO_URI=mongo_uri, MONGO_DB=f"worker_{uuid.uuid4().hex[:12]}",
                 DATA_DIR=str(tmp_path_factory.mktemp("worker")), GUNICORN_THREADS=str(THREADS),
                 REQUEST_READ_TIMEOUT=str(READ_TIMEOUT), BODY_MEMORY_BUDGET=str(BUDGET),
                 SAVE_MAX_CONTENT_LENGTH=str(SAVE_MAX)) as server:
        yield server.port
    assert "Traceback" not in server.output(), server.output()


def post(port: int, path: str, value) -> requests.Response:
    """POST `value` as JSON with requests (a client that sends at once)."""
    return requests.post(f"http://127.0.0.1:{port}{path}", json=value, timeout=30)


def save_of(username: str, size: int, name: str = "big") -> bytes:
    """Return a /paint/save body of about `size` bytes."""
    return json.dumps(save_body(username, rapid=[scheme(name, "A" * (size // 4 * 4))])).encode()


def saved_names(port: int, username: str) -> list[str]:
    """Return the names of the participant's rapid-divergence schemes, as /paint/start answers them."""
    data = post(port, "/paint/start", {"username": username}).json()["data"]
    return [s["name"] for s in data["rapidDivergenceSchemes"]]


def reserved(port: int) -> float:
    """Return the body memory the server holds now, as /metrics says."""
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text.splitlines():
        if line.startswith("refinity_body_memory_reserved_bytes "):
            return float(line.split()[1])
    raise AssertionError("no refinity_body_memory_reserved_bytes in /metrics")


def test_slow_clients_hold_no_thread_and_are_answered_408(port):
    slow_heads = [Connection(port) for _ in range(2 * THREADS)]
    slow_bodies = [Connection(port) for _ in range(2 * THREADS)]
    for connection in slow_heads:
        connection.send(b"POST /paint/start HTTP/1.1\r\nHost: test\r\nContent-Ty")
    for connection in slow_bodies:
        connection.send(request_head("POST", "/paint/start", 100, Content_Type=JSON) + b'{"username": "sl')
    # gunicorn's own gthread would have a thread blocked in each of them, and answer none of these.
    assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=30).text == "pong"
    assert post(port, "/paint/start", {"username": "quick"}).json()["success"] is True
    assert post(port, "/paint/save", save_body("quick", rapid=[scheme("q")])).json()["success"] is True

    for connection, part in [(c, "head") for c in slow_heads] + [(c, "body") for c in slow_bodies]:
        with connection:
            answer = connection.answer()
            assert answer.status == 408 and answer.headers["connection"] == "close"
            envelope = answer.envelope()
            assert envelope["success"] is False and envelope["code"] == 1
            assert f"request's {part}" in envelope["message"]
            assert connection.closed_by_server()


def test_a_request_sent_in_pieces_is_served_whole(port):
    assert post(port, "/paint/start", {"username": "pieces"}).json()["success"] is True
    whole = json_request("/paint/save", save_body("pieces", rapid=[scheme("first"), scheme("second")]))
    with Connection(port) as connection:
        for cut in range(0, len(whole), 97):  # the head's lines and the body cut anywhere
            connection.send(whole[cut:cut + 97])
            time.sleep(0.002)
        assert connection.answer().envelope()["success"] is True
        connection.send(request_head("GET", "/ping"))  # the connection stays open for the next request
        assert connection.answer().body == b"pong"
    assert saved_names(port, "pieces") == ["first", "second"]


def test_pipelined_requests_are_answered_in_order(port):
    with Connection(port) as connection:
        connection.send(json_request("/paint/start", {"username": "piped"}) + request_head("GET", "/ping")
                        + json_request("/paint/save", save_body("piped", rapid=[scheme("p")])))
        assert connection.answer().envelope()["data"]["username"] == "piped"
        assert connection.answer().body == b"pong"
        assert connection.answer().envelope()["success"] is True
    assert saved_names(port, "piped") == ["p"]


def chunked(body: bytes, size: int) -> bytes:
    """Return `body` in the chunked transfer coding, with an extension and a trailer for good measure."""
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x;piece=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Checked: yes\r\n\r\n"


def test_chunked_bodies_are_read_and_malformed_ones_refused(port):
    assert post(port, "/paint/start", {"username": "chunks"}).json()["success"] is True
    head = request_head("POST", "/paint/save", Content_Type=JSON, Transfer_Encoding="chunked")
    with Connection(port) as connection:
        connection.send(head + chunked(save_of("chunks", 300_000, "chunked"), 7_000))
        assert connection.answer().envelope()["success"] is True
        connection.send(request_head("GET", "/ping"))
        assert connection.answer().body == b"pong"
    assert saved_names(port, "chunks") == ["chunked"]

    with Connection(port) as connection:
        connection.send(head + b"zz\r\n{}\r\n0\r\n\r\n")  # a chunk size that is no hex number
        answer = connection.answer()
        assert answer.status == 400 and "chunked" in answer.envelope()["message"]


def test_of_two_overlapping_saves_the_one_whose_head_came_last_stays_current(port):
    assert post(port, "/paint/start", {"username": "overlap"}).json()["success"] is True
    first = json_request("/paint/save", save_body("overlap", task="sent first"))
    with Connection(port) as slow:
        slow.send(first[:-10])  # its head and most of its body: the loop holds it, not yet the app
        assert post(port, "/paint/save", save_body("overlap", task="sent last")).json()["success"] is True
        slow.send(first[-10:])  # now it is whole, and stored after the other
        assert slow.answer().envelope()["success"] is True
    session = post(port, "/paint/start", {"username": "overlap"}).json()["data"]
    assert session["designTask"] == "sent last"


def test_expect_100_continue_is_answered_before_the_body(port):
    assert post(port, "/paint/start", {"username": "expects"}).json()["success"] is True
    body = save_of("expects", 200_000, "expected")
    with Connection(port) as connection:
        connection.send(request_head("POST", "/paint/save", len(body), Content_Type=JSON, Expect="100-continue"))
        assert connection.answer().status == 100
        connection.send(body)
        assert connection.answer().envelope()["success"] is True
    assert saved_names(port, "expects") == ["expected"]


def test_bodies_are_read_only_within_the_budget(port):
    assert post(port, "/paint/start", {"username": "greedy"}).json()["success"] is True
    holder_body = save_of("greedy", 3 * MB, "holder")  # reserves 6 of the 8 MB before it is sent
    with Connection(port) as holder:
        holder.send(request_head("POST", "/paint/save", len(holder_body), Content_Type=JSON, Expect="100-continue"))
        assert holder.answer().status == 100

        second = save_of("greedy", int(1.5 * MB), "second")
        with Connection(port) as refused:
            refused.send(request_head("POST", "/paint/save", len(second), Content_Type=JSON, Expect="100-continue"))
            answer = refused.answer()  # at once, before any of the body: no 100 Continue
            assert answer.status == 503 and answer.headers["retry-after"] == str(RETRY_AFTER)
            assert answer.envelope()["code"] == 1 and "busy" in answer.envelope()["message"]
            assert answer.headers["access-control-allow-origin"] == "*"  # the app answered: CORS, ids
        with Connection(port) as eager:  # a client that sends its whole body anyway still reads the answer
            eager.send(request_head("POST", "/paint/save", len(second), Content_Type=JSON) + second)
            assert eager.answer().status == 503
            assert eager.closed_by_server()

        holder.send(holder_body)
        assert holder.answer().envelope()["success"] is True
    assert saved_names(port, "greedy") == ["holder"]
    assert reserved(port) == 0

    never = save_of("greedy", int(4.5 * MB))  # twice that is more than the whole budget
    assert post(port, "/paint/save", json.loads(never)).status_code == 413
    too_large = SAVE_MAX + 1
    with Connection(port) as connection:
        connection.send(request_head("POST", "/paint/save", too_large, Content_Type=JSON))
        assert connection.answer().status == 413
    assert reserved(port) == 0


@pytest.mark.parametrize("setting,value", [("certfile", "server.pem"), ("http_protocols", "h1,h2"),
                                           ("http2_cleartext", "upgrade")])
def test_the_worker_refuses_to_start_on_what_its_loop_cannot_read(setting, value):
    cfg = Config()
    BufferedThreadWorker.check_config(cfg, logging.getLogger(__name__))  # gunicorn.conf.py's plain HTTP/1.1
    cfg.set(setting, value)
    with pytest.raises(ConfigError, match="plain HTTP/1.1"):
        BufferedThreadWorker.check_config(cfg, logging.getLogger(__name__))
