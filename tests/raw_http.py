"""A raw HTTP/1.1 connection for tests that send requests the way no library would: slowly, in pieces, unfinished."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    """One HTTP answer as it came over the socket."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def envelope(self) -> dict[str, Any]:
        """Return the body as JSON (the envelope, for every answer of the API but /ping)."""
        return json.loads(self.body)


def request_head(method: str, path: str, length: int | None = None, **headers: str) -> bytes:
    """Return a request's head; `length` sets Content-Length, keyword names use _ for - (Content_Type)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_request(path: str, value: Any, **headers: str) -> bytes:
    """Return a whole POST of `value` as JSON."""
    body = json.dumps(value).encode()
    return request_head("POST", path, len(body), Content_Type="application/json", **headers) + body


class Connection:
    """One TCP connection to the server, its answers read by Content-Length."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """Send `data` as it is."""
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def answer(self) -> Answer:
        """Read the next answer (a 100 Continue is one too)."""
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", 0))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_by_server(self) -> bool:
        """Return whether the server has closed its side (after everything it sent was read)."""
        try:
            return not self._buffer and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
