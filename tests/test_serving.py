"""The servers as they run: `gunicorn -c gunicorn.conf.py app:app` and `python app.py`, over real sockets.

Each runs as a subprocess on a free port, on the session's store. What is checked: every line
either writes is one JSON object (the store line, its own messages and an access line per
request among them) and none holds a query string or a secret; every answer, those the HTTP
server gives itself included, is in the envelope; `python app.py` listens on loopback only;
and from another address than loopback the researcher routes are refused.
"""
from __future__ import annotations

import ipaddress
import json
import runpy
import socket
import uuid

import pytest
import requests

from core.embedded_store import free_port
from tests.helpers import DEV_SERVER, GUNICORN, ROOT, ServerProcess, answers_ping, server_env, wait_until

SECRET = "q-secret-8d1f"  # sent in a query string: must be in no log line
TOKEN = "tok-secret-77a2"  # sent as a bearer token: must be in no log line
CLOSE = "Connection: close\r\n"
ENVELOPE = {"success", "data", "code", "message"}


def lan_address() -> str | None:
    """Return this machine's address on its network (not loopback), or None when it has none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # sends nothing: it only picks the outgoing interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


LAN = lan_address()


def exchange(port: int, sent: bytes, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes, and return (status, headers, body)."""
    with socket.create_connection((host, port), timeout=10) as connection:
        try:
            connection.sendall(sent)
        except OSError:
            pass  # the server may stop reading once it has seen enough; its answer still comes
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def envelope_of(status: int, headers: dict[str, str], body: bytes) -> dict:
    """Return the failure envelope of an answer, checking its shape and media type."""
    assert headers["content-type"].startswith("application/json"), (status, headers, body[:200])
    answer = json.loads(body)
    assert set(answer) == ENVELOPE and answer["success"] is False and answer["data"] is None, answer
    assert answer["code"] == 1 and answer["message"], answer
    assert headers.get("x-request-id")
    return answer


def json_lines(server: ServerProcess) -> list[dict]:
    """Return every line the server wrote on stderr, each parsed as the one JSON object it must be."""
    lines = []
    for text in list(server.err):
        line = json.loads(text)
        assert isinstance(line, dict) and {"time", "level", "logger", "pid", "message"} <= set(line), text
        lines.append(line)
    return lines


def access_lines(server: ServerProcess) -> list[dict]:
    """Return the access lines the server wrote so far."""
    return [line for line in json_lines(server) if line["logger"] == "refinity.access"]


def start(command: list[str], mongo_uri: str, tmp_path, **settings: str) -> tuple[ServerProcess, int]:
    """Start a server on a free port and the session's store; return it once it answers, and its port."""
    port = free_port()
    env = server_env(PORT=str(port), LOG_LEVEL="INFO", MONGO_URI=mongo_uri, DATA_DIR=str(tmp_path / "var"),
                     MONGO_DB=f"serving_{uuid.uuid4().hex[:12]}", GUNICORN_THREADS="4", **settings)
    server = ServerProcess(command, env)
    try:
        wait_until(lambda: server.process.poll() is not None or answers_ping(f"http://127.0.0.1:{port}"), 30,
                   "the server to answer")
        assert server.process.poll() is None, server.output()
    except BaseException:
        server.close()
        raise
    return server, port


@pytest.fixture(scope="module")
def production(mongo_uri, tmp_path_factory):
    """gunicorn with the production config; listening on every address when the machine has a LAN one."""
    server, port = start(GUNICORN, mongo_uri, tmp_path_factory.mktemp("gunicorn"),
                         HOST="0.0.0.0" if LAN else "127.0.0.1")
    yield server, port
    server.close()


@pytest.fixture(scope="module")
def development(mongo_uri, tmp_path_factory):
    """`python app.py` with HOST unset: its default."""
    server, port = start(DEV_SERVER, mongo_uri, tmp_path_factory.mktemp("dev"))
    yield server, port
    server.close()


# What the HTTP server answers itself, and what it must not turn into a redirect.
TOO_LONG = "/ping?" + "x" * 70_000  # beyond gunicorn's largest limit (8190) and Werkzeug's (65536)
REFUSED = {
    "request line too long": (f"GET {TOO_LONG} HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "too many headers": ("GET /ping HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-{i}: y\r\n" for i in range(120))
                         + "\r\n", 431),
    "not HTTP": ("HELLO THERE\r\n\r\n", 400),
}
GUNICORN_REFUSED = {
    "one header too large": (f"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {'y' * 9000}\r\n\r\n", 431),
    "bad header name": ("GET /ping HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
}
# gunicorn parses a chunked body while the app reads it: the app answers a broken one.
BROKEN_BODY = ("POST /paint/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400)
NO_REDIRECT = {
    "doubled slashes": (f"GET //images//{'a' * 64} HTTP/1.1\r\nHost: x\r\n{CLOSE}\r\n", 404),
    "trailing slash": (f"GET /generations/ HTTP/1.1\r\nHost: x\r\n{CLOSE}\r\n", 404),
    "wrong method": (f"GET /paint/start HTTP/1.1\r\nHost: x\r\n{CLOSE}\r\n", 405),
}


@pytest.mark.parametrize("sent, status", [*REFUSED.values(), *GUNICORN_REFUSED.values(), *NO_REDIRECT.values(),
                                         BROKEN_BODY], ids=[*REFUSED, *GUNICORN_REFUSED, *NO_REDIRECT, "broken body"])
def test_what_gunicorn_answers_is_in_the_envelope(production, sent, status):
    _, port = production
    answered = exchange(port, sent.encode("latin-1"))
    assert answered[0] == status
    envelope_of(*answered)


@pytest.mark.parametrize("sent, status", [*REFUSED.values(), *NO_REDIRECT.values()], ids=[*REFUSED, *NO_REDIRECT])
def test_what_python_app_py_answers_is_in_the_envelope(development, sent, status):
    _, port = development
    answered = exchange(port, sent.encode("latin-1"))
    assert answered[0] == status
    envelope_of(*answered)


def _visit(port: int) -> None:
    """Make requests whose query string, headers and forwarded address must stay out of the logs."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.99"}
    assert requests.post(f"{base}/paint/start?token={SECRET}", json={"username": "alice"}, headers=headers,
                         timeout=10).status_code == 200
    assert requests.get(f"{base}/generations?{SECRET}=1", timeout=10).status_code == 400
    exchange(port, f"GET /ping?token={SECRET}{'x' * 70_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def _check_logs(server: ServerProcess, store_line: str, since: int) -> None:
    """Check the log, whose access lines from the `since`-th on are those of `_visit`."""
    visited = {"/paint/start", "/generations", "<not parsed>"}
    # Each of the visit's own lines, not lines of earlier tests on the same server.
    wait_until(lambda: visited <= {line["route"] for line in access_lines(server)[since:]}, 10, "the access lines")
    lines = json_lines(server)
    assert any(line["message"].startswith(store_line) for line in lines)
    visits = {line["route"]: line for line in access_lines(server)[since:]}
    assert visits["/paint/start"]["status"] == 200 and visits["/paint/start"]["method"] == "POST"
    assert visits["<not parsed>"]["status"] == 414 and visits["<not parsed>"]["request_id"]
    written = server.output()
    for secret in (SECRET, TOKEN, "203.0.113.99", "alice"):
        assert secret not in written, secret
    assert "?" not in "".join(line["route"] for line in lines if "route" in line)


def test_gunicorn_writes_only_json_lines_without_queries_or_secrets(production):
    server, port = production
    since = len(access_lines(server))
    _visit(port)
    _check_logs(server, "store: MongoDB at mongodb://127.0.0.1:", since)
    assert server.out == []  # gunicorn's own access log, which wrote query strings, is off
    assert server.said('"logger":"gunicorn.error"') and server.said("Booting worker")


def test_python_app_py_writes_only_json_lines_without_queries_or_secrets(development):
    server, port = development
    since = len(access_lines(server))
    _visit(port)
    _check_logs(server, "store: MongoDB at mongodb://127.0.0.1:", since)
    assert server.said(f'"message":"serving on http://127.0.0.1:{port}"')


@pytest.mark.skipif(LAN is None, reason="this machine has no address but loopback")
def test_python_app_py_listens_on_loopback_only(development):
    _, port = development
    with pytest.raises(OSError):
        socket.create_connection((LAN, port), timeout=2).close()


@pytest.mark.skipif(LAN is None, reason="this machine has no address but loopback")
def test_from_another_address_only_the_participant_routes_answer(production):
    _, port = production
    away, here = f"http://{LAN}:{port}", f"http://127.0.0.1:{port}"
    refused = requests.get(f"{away}/generations", timeout=10)
    assert refused.status_code == 403 and "API_TOKEN" in refused.json()["message"]
    assert requests.get(f"{away}/metrics", timeout=10).status_code == 403
    assert requests.post(f"{away}/paint/start", json={"username": "bob"}, timeout=10).status_code == 200
    assert requests.get(f"{away}/readyz", timeout=10).json()["data"] is None  # details withheld
    assert requests.get(f"{here}/generations", timeout=10).status_code == 200


def test_gunicorn_binds_where_python_app_py_does(monkeypatch):
    for name in ("HOST", "PORT"):
        monkeypatch.setenv(name, "")  # set, so no .env can fill it in: the defaults
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "127.0.0.1:5000"
    monkeypatch.setenv("HOST", "0.0.0.0")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "0.0.0.0:5000"
