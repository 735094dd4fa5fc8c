"""The body memory budget in the app itself, over the socket of `python app.py`'s server (werkzeug's).

gunicorn's worker reserves on its event loop instead (tests/test_worker.py); these are the
same rules where the app reads the body itself.
"""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import make_server

from core.request_body import EXTENSION, PARSE_FACTOR, RETRY_AFTER
from tests.helpers import PROMPTS, body, save_body, scheme
from tests.openapi_support import check_response

MB = 1024 * 1024
BUDGET = 4 * MB


@pytest.fixture
def served(make_app) -> Iterator[tuple[str, object]]:
    """Serve an app with a 4 MB budget on werkzeug's threaded server; yield its URL and the app."""
    app = make_app(BODY_MEMORY_BUDGET=BUDGET)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}", app
    server.shutdown()
    thread.join(10)


def sketch_of(size: int) -> dict:
    """Return a scheme whose sketch makes its JSON about `size` bytes."""
    return scheme("big", "A" * (size // 4 * 4))


def head_only(base: str, path: str, length: int) -> tuple[int, dict, dict]:
    """Send a request's head with Content-Length but none of its body; return the answer's status, headers, envelope."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_spent_budget_answers_503_before_the_body_is_sent(served):
    base, app = served
    budget = app.extensions[EXTENSION]
    assert requests.post(base + "/paint/start", json={"username": "alice"}).status_code == 200
    assert budget.reserve(BUDGET - MB)  # as if another request held it

    status, headers, answer = head_only(base, "/paint/save", MB)
    assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER)
    assert answer["success"] is False and answer["code"] == 1 and "busy" in answer["message"]

    budget.release(BUDGET - MB)
    body = save_body("alice", rapid=[sketch_of(MB)])
    assert requests.post(base + "/paint/save", json=body).json()["success"] is True
    assert budget.used == 0


def test_a_body_that_could_never_fit_is_413(served):
    base, _ = served
    status, _, answer = head_only(base, "/paint/save", BUDGET // PARSE_FACTOR + 1)
    assert status == 413 and answer["code"] == 1 and "larger" in answer["message"]


@pytest.mark.parametrize("path,body,status", [
    ("/paint/start", {"username": "carol"}, 200),
    ("/paint/save", save_body("nobody", rapid=[sketch_of(MB)]), 404),
    ("/paint/save", {"username": "carol", "data": {}}, 400),
    ("/generate", {"appid": 0, "type": 9, "prompts": {}}, 400),
])
def test_every_request_gives_its_reservation_back(served, path, body, status):
    base, app = served
    assert requests.post(base + path, json=body).status_code == status
    assert app.extensions[EXTENSION].used == 0
    metrics = requests.get(base + "/metrics").text
    assert "refinity_body_memory_reserved_bytes 0.0" in metrics


def chunked(data: bytes, piece: int = 256 * 1024) -> Iterator[bytes]:
    """Yield `data` in pieces, which requests sends with Transfer-Encoding: chunked."""
    for start in range(0, len(data), piece):
        yield data[start:start + piece]


def test_a_chunked_body_reserves_as_it_arrives(served):
    base, app = served
    budget = app.extensions[EXTENSION]
    headers = {"Content-Type": "application/json"}
    assert requests.post(base + "/paint/start", json={"username": "dave"}).status_code == 200
    body = json.dumps(save_body("dave", rapid=[sketch_of(MB)])).encode()
    assert requests.post(base + "/paint/save", data=chunked(body), headers=headers).json()["success"] is True

    assert budget.reserve(BUDGET - MB)  # room for half a MB of body: the first piece of 1 MB does not fit
    answer = requests.post(base + "/paint/save", data=chunked(body), headers=headers)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == str(RETRY_AFTER)
    budget.release(BUDGET - MB)
    assert budget.used == 0

    too_big = json.dumps(save_body("dave", rapid=[sketch_of(3 * MB)])).encode()
    assert requests.post(base + "/paint/save", data=chunked(too_big), headers=headers).status_code == 413
    assert budget.used == 0


@pytest.mark.parametrize("path,value", [
    ("/paint/start", {"username": "erin"}),
    ("/paint/save", save_body("erin")),
    ("/generate", body(0, PROMPTS[0])),
])
def test_busy_answers_are_as_the_document_says(make_app, path, value):
    app = make_app(BODY_MEMORY_BUDGET=BUDGET)
    assert app.extensions[EXTENSION].reserve(BUDGET)
    answer = app.test_client().post(path, json=value)
    assert answer.status_code == 503 and answer.get_json()["code"] == 1
    check_response(path, "post", answer)


def test_a_budget_must_be_positive(make_app):
    with pytest.raises(ValueError, match="BODY_MEMORY_BUDGET"):
        make_app(BODY_MEMORY_BUDGET=0)
