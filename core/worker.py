"""The production worker: gunicorn's gthread, except that each request is read whole before a thread serves it.

gunicorn's gthread worker gives a connection to a thread as soon as it is readable, and the
thread then blocks reading the head and the body as slowly as the client sends them: as many
clients as there are threads, each sending a byte every two seconds, hold every thread, and
nobody else is served.
This worker reads requests on its event loop (the one thread that accepts connections),
without blocking, as a reverse proxy in front of the threads would:

- A request's head must arrive within REQUEST_READ_TIMEOUT seconds of the connection (or of
  the previous answer on it); its body within that time again, plus a second for every
  REQUEST_MIN_RATE bytes of it that arrive. A slower client gets 408 and is disconnected.
- What the loop holds counts against the app's body memory budget (`core.request_body`): a
  head's bytes as they arrive, a body by its Content-Length before any of it is read (a
  chunked one as it arrives). A body that cannot be reserved is not read: the request goes to
  the app at once, which answers 503 (or 413); so does one above the largest body any route takes.
- A thread gets a request once all of it is in memory, so threads only ever wait for the app.
- A connection that closes lingers on the loop, draining what the client still sends so that
  a reset does not cut off its answer (gunicorn lingers up to 2 s in the loop's own thread).

The connection budget is gunicorn's `worker_connections`. Plain HTTP/1.1 only: TLS and HTTP/2
belong to a proxy in front. It builds on gunicorn 27's gthread worker, which requirements.txt
pins, through `core.serving.EnvelopeWorker`, which answers what gunicorn refuses in the envelope;
what this loop refuses itself (408, a broken chunked body, no memory for a head) is answered
and logged the same way.
"""
from __future__ import annotations

import resource
import selectors
import socket
import time
import uuid
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus

import h11
from gunicorn.errors import ConfigError
from gunicorn.http.body import ChunkedReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from werkzeug.exceptions import RequestEntityTooLarge

from core import logs, request_body
from core.request_body import BodyMemoryBudget, BodyMemoryFull, ReadBody
from core.serving import ROUTE, EnvelopeWorker, error_answer

HEAD_PIECE = 64 * 1024  # bytes asked of a socket at once, unless a body's length says more
READS_PER_EVENT = 8  # recv() calls for one connection before the loop turns to the others
LINGER_SECONDS = 2.0  # as gunicorn's own lingering close
LINGER_BYTES = 64 * 1024
SWEEP_SECONDS = 0.25  # how often the loop looks for reads past their deadline
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _LengthBody:
    """A body of known length, kept in the pieces it arrives in."""

    def __init__(self, length: int) -> None:
        self.missing = length
        self.size = 0
        self.pieces: list[bytes] = []
        self.done = length == 0

    def want(self) -> int:
        """Return how much to ask the socket for: never beyond the body, where the next request starts."""
        return min(self.missing, request_body.PIECE)

    def feed(self, data: bytes) -> tuple[int, bytes]:
        """Keep what of `data` belongs to the body; return how much that was, and the bytes after the body."""
        piece, rest = (data, b"") if len(data) <= self.missing else (data[:self.missing], data[self.missing:])
        self.pieces.append(piece)
        self.missing -= len(piece)
        self.size += len(piece)
        self.done = self.missing == 0
        return len(piece), rest


class _ChunkedBody:
    """A chunked body, decoded by h11 as it arrives (gunicorn has read the head already)."""

    # h11 decodes a body only after a head; this one says what gunicorn found in the real one.
    _HEAD = b"POST / HTTP/1.1\r\nHost: body\r\nTransfer-Encoding: chunked\r\n\r\n"

    def __init__(self) -> None:
        self._decoder = h11.Connection(h11.SERVER)
        self._decoder.receive_data(self._HEAD)
        self._decoder.next_event()
        self.size = 0
        self.pieces: list[bytes] = []
        self.done = False

    def want(self) -> int:
        """Return how much to ask the socket for."""
        return HEAD_PIECE

    def feed(self, data: bytes) -> tuple[int, bytes]:
        """Decode `data`; return how many body bytes it held, and the bytes after the body. Raise h11's error if malformed."""
        self._decoder.receive_data(data)
        taken = 0
        while not self.done:
            event = self._decoder.next_event()
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Data):
                self.pieces.append(bytes(event.data))
                taken += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
        self.size += taken
        return taken, bytes(self._decoder.trailing_data[0]) if self.done else b""


class _Incoming:
    """A request arriving on one connection: its head's bytes, then its body."""

    def __init__(self, deadline: float) -> None:
        self.buffer = bytearray()  # the head, and whatever came with it
        self.deadline = deadline
        self.held = 0  # head bytes reserved from the budget
        self.head = b""
        self.body: _LengthBody | _ChunkedBody | None = None
        self.reserved = 0  # for the body
        self.arrival = 0  # request_body.arrive() once the head is in

    def want(self) -> int:
        """Return how much to ask the socket for next."""
        return HEAD_PIECE if self.body is None else self.body.want()


@dataclass
class _Ready:
    """What the loop read of a request, for the thread that serves it."""

    data: bytes  # the head, and any bytes after what the loop read (the next request's)
    body: ReadBody | None  # None: gunicorn's own body reader, for a request with no body to read
    close: bool = False  # the body was left unread: close the connection after the answer
    unread: int = LINGER_BYTES  # what to drain while closing: the whole unread body when its size is known


class BufferedThreadWorker(EnvelopeWorker):
    """gunicorn's gthread worker (answering in the envelope), reading every request whole on its loop first."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._incoming: dict = {}  # TConn -> _Incoming
        self._lingering: dict = {}  # TConn -> [deadline, bytes drained]
        self._next_sweep = 0.0

    @classmethod
    def check_config(cls, cfg, log) -> None:
        """Refuse settings whose bytes this worker could not read on its loop."""
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http_protocols != ["h1"] or cfg.http2_cleartext != "off":
            raise ConfigError("core.worker reads plain HTTP/1.1 only: put TLS and HTTP/2 in a proxy in front")

    def run(self) -> None:
        """Take the settings from the app this worker loaded, then serve."""
        settings = self.wsgi.config
        self._budget: BodyMemoryBudget = self.wsgi.extensions[request_body.EXTENSION]
        self._timeout: float = settings["REQUEST_READ_TIMEOUT"]
        self._min_rate: int = settings["REQUEST_MIN_RATE"]
        self._largest = request_body.largest_body(settings)
        if self._timeout <= 0 or self._min_rate <= 0:
            raise ConfigError("REQUEST_READ_TIMEOUT and REQUEST_MIN_RATE must be positive")
        self._raise_file_limit()
        if not request_body.return_freed_bodies():
            self.log.warning("could not make malloc return freed request bodies; memory may exceed BODY_MEMORY_BUDGET")
        super().run()

    def _raise_file_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.worker_connections + 256  # and the store's, the backends' and the log's
        if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
            soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft < wanted:
            self.log.warning("open files are limited to %d, below worker_connections (%d) and a margin: "
                             "raise `ulimit -n`", soft, self.worker_connections)

    # -- the loop: reading ------------------------------------------------------------------
    def enqueue_req(self, conn) -> None:
        """Read the connection's next request on the loop (gunicorn would give it to a thread now)."""
        data = conn.parser.unreader.take_buffered() if conn.parser else b""
        conn.sock.setblocking(False)
        incoming = self._incoming[conn] = _Incoming(time.monotonic() + self._timeout)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if data:
            self._take(conn, incoming, data)

    def _on_readable(self, conn, _sock) -> None:
        incoming = self._incoming[conn]
        for _ in range(READS_PER_EVENT):
            try:
                data = conn.sock.recv(incoming.want())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the client went away
                self._close(conn)
                return
            try:
                if not self._take(conn, incoming, data):
                    return
            except Exception:  # one connection's trouble must not stop the loop every connection needs
                self.log.exception("could not read a request from %s", conn.client)
                self._close(conn)
                return

    def _take(self, conn, incoming: _Incoming, data: bytes) -> bool:
        """Add `data` to the request; return whether more is to be read."""
        if incoming.body is not None:
            return self._take_body(conn, incoming, data)
        if not self._budget.reserve(len(data)):
            full = BodyMemoryFull()
            self._answer(conn, HTTPStatus.SERVICE_UNAVAILABLE, full.message, full.headers)
            return False
        incoming.held += len(data)
        incoming.buffer += data
        return self._take_head(conn, incoming)

    def _take_head(self, conn, incoming: _Incoming) -> bool:
        number = (conn.parser.req_count if conn.parser else 0) + 1
        try:
            head = Request(self.cfg, IterUnreader([bytes(incoming.buffer)]), conn.client, number)
        except (NoMoreData, StopIteration):
            return True  # not all of it yet
        except Exception:
            # The thread's parser refuses these same bytes at once, with gunicorn's own answer.
            self._dispatch(conn, _Ready(bytes(incoming.buffer), None, close=True))
            return False
        incoming.arrival = request_body.arrive()  # the request's place in line is its head's, not its body's
        rest = head.unreader.take_buffered()
        incoming.head = bytes(incoming.buffer[:len(incoming.buffer) - len(rest)])
        incoming.buffer = bytearray()
        if isinstance(head.body.reader, ChunkedReader):
            incoming.body = _ChunkedBody()
        else:
            length = head.body.reader.length
            if length == 0:
                self._dispatch(conn, _Ready(incoming.head + rest, None))
                return False
            if length > self._largest:  # the app answers 413 without reading it
                self._dispatch(conn, _Ready(incoming.head, None, close=True, unread=length - len(rest)))
                return False
            try:
                incoming.reserved = self._budget.admit(length)
            except (RequestEntityTooLarge, BodyMemoryFull) as error:  # for the app to answer
                self._refuse(conn, incoming, error, unread=length - len(rest))
                return False
            incoming.body = _LengthBody(length)
        if head._expected_100_continue:  # the client waits for this before it sends the body
            self._send(conn, CONTINUE)
        incoming.deadline = time.monotonic() + self._timeout
        return self._take_body(conn, incoming, rest) if rest else True

    def _take_body(self, conn, incoming: _Incoming, data: bytes) -> bool:
        body = incoming.body
        try:
            taken, rest = body.feed(data)
        except h11.RemoteProtocolError:
            self._answer(conn, HTTPStatus.BAD_REQUEST, "body: its chunked transfer coding is malformed")
            return False
        incoming.deadline += taken / self._min_rate
        if isinstance(body, _ChunkedBody) and taken:
            try:
                if body.size > self._largest:
                    raise RequestEntityTooLarge()
                incoming.reserved += self._budget.admit(taken)
            except (RequestEntityTooLarge, BodyMemoryFull) as error:
                self._refuse(conn, incoming, error)
                return False
        if not body.done:
            return True
        read = ReadBody(self._budget, body.pieces, incoming.reserved, incoming.arrival)
        body.pieces, incoming.reserved = [], 0  # the thread's join frees the pieces: nothing else holds them
        self._dispatch(conn, _Ready(incoming.head + rest, read))
        return False

    def _refuse(self, conn, incoming: _Incoming, error: Exception, unread: int = LINGER_BYTES) -> None:
        """Give the request to the app with its body unread, to answer `error`."""
        read = ReadBody.refused(self._budget, error, incoming.reserved, incoming.arrival)
        incoming.reserved = 0
        self._dispatch(conn, _Ready(incoming.head, read, close=True, unread=unread))

    def _dispatch(self, conn, ready: _Ready) -> None:
        self._stop_reading(conn)
        conn.read_ahead = ready
        super().enqueue_req(conn)

    def _stop_reading(self, conn) -> None:
        incoming = self._incoming.pop(conn)
        self.poller.unregister(conn.sock)
        self._budget.release(incoming.held + incoming.reserved)

    # -- the loop: answering and closing ----------------------------------------------------
    def _answer(self, conn, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer `status` in the envelope from the loop, where no request reached the app, log it and close."""
        self._stop_reading(conn)
        request_id = uuid.uuid4().hex
        logs.access(request_id=request_id, method=None, route=ROUTE, status=status.value, seconds=0.0,
                    remote=conn.client[0] if conn.client else None, error=status.phrase)
        self._send(conn, error_answer(status.value, request_id, message, headers))
        self._linger(conn)

    @staticmethod
    def _send(conn, data: bytes) -> None:
        try:  # a few hundred bytes into an idle socket's buffer; a client that reads nothing loses them
            conn.sock.send(data)
        except OSError:
            pass

    def finish_request(self, conn, fs) -> None:
        """Linger on the loop where gunicorn would close gracefully in it; anything else as gunicorn does."""
        ready: _Ready | None = getattr(conn, "read_ahead", None)
        conn.read_ahead = None
        if fs.cancelled() or fs.exception() is not None or fs.result():
            super().finish_request(conn, fs)
        else:
            self._linger(conn, ready.unread if ready else LINGER_BYTES)

    def _linger(self, conn, unread: int = LINGER_BYTES) -> None:
        """Close after draining what the client still sends: `unread` bytes at most, within a deadline."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        seconds = LINGER_SECONDS
        if unread > LINGER_BYTES:
            # A body left unread is drained whole: a client that sends all of it reads its answer
            # only then, and a reset would lose the answer. At the pace any body must keep.
            seconds = max(seconds, self._timeout + unread / self._min_rate)
        self._lingering[conn] = [time.monotonic() + seconds, max(unread, LINGER_BYTES)]
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger, conn))

    def _on_linger(self, conn, _sock) -> None:
        state = self._lingering[conn]
        try:
            data = conn.sock.recv(min(state[1], request_body.PIECE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        state[1] -= len(data)
        if not data or state[1] <= 0:
            self._close(conn)

    def _close(self, conn) -> None:
        if conn in self._incoming:
            self._stop_reading(conn)
        elif self._lingering.pop(conn, None) is not None:
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also answer 408 to requests past their deadline, and end lingering past its own."""
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        for conn, incoming in list(self._incoming.items()):
            if incoming.deadline > now:
                continue
            if incoming.body is None:
                late = f"the request's head did not arrive within {self._timeout:g} s"
            else:
                late = f"the request's body arrived slower than {self._min_rate} bytes/s"
            self._answer(conn, HTTPStatus.REQUEST_TIMEOUT, f"{late}; send it again")
        for conn, (deadline, _) in list(self._lingering.items()):
            if deadline <= now:
                self._close(conn)

    # -- the threads ------------------------------------------------------------------------
    def handle(self, conn):
        """Serve the request the loop read, from memory."""
        ready: _Ready = conn.read_ahead
        try:
            conn.data_ready = True  # gunicorn would wait for the socket to be readable first
            conn.init()
            conn.parser.unreader.unread(ready.data)
            return super().handle(conn)
        finally:
            if ready.body is not None:
                ready.body.release()

    def handle_request(self, req, conn):
        """Serve `req` with the body the loop read (and the 100 Continue it sent)."""
        ready: _Ready = conn.read_ahead
        if ready.body is not None:
            req.body = ready.body
            req._expected_100_continue = False
        if ready.close:
            req.force_close()
        return super().handle_request(req, conn)
