"""One connection to the local HTTP server, on the transport directly (an ``asyncio.Protocol``).

Streams cost a task per connection, a reader and a writer, and an await per read, drain
and timeout; a scrape is a few microseconds of work each way, so those were about half
of the server's CPU per scrape. Here a request that arrives whole is parsed and answered
inside ``data_received``, with no task and no timer set or cancelled: one timer per
connection watches a deadline that moves by attribute writes and re-arms itself when it
fires early. Only an endpoint that has to wait (the status page's files, ``/status.json``)
gets a task.

A connection is in one of three states, each with its deadline and the reason counted
when it passes: reading a request head (``head_timeout`` from the accept, or from the
first byte on a kept-alive connection), idle between requests (``idle_timeout``), and
answering (``write_timeout`` from the request, only armed when the answer cannot go out
at once: a waiting endpoint, or a client that does not read and so pauses the writes).
Requests that arrive while one is answered (pipelining) wait in the buffer and are
answered in order; reading pauses once they fill a head's limit.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.http import HttpServer, Response

MAX_HEAD = 16 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
TOO_LARGE: Response = (413, "text/plain", b"request head too large\n")
NO_BODIES: Response = (400, "text/plain", b"request bodies are not accepted\n")
BAD_LINE: Response = (400, "text/plain", b"bad request line\n")
HEADING, IDLE, ANSWERING, CLOSED = "head_timeout", "idle_timeout", "write_timeout", "closed"


def format_head(response: Response, keep_alive: bool) -> bytes:
    status, content_type, body, *extra = response
    headers = "".join(f"{name}: {value}\r\n" for name, value in extra[0].items()) if extra else ""
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{headers}"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")


class Connection(asyncio.Protocol):
    __slots__ = (
        "admitted",
        "buffer",
        "deadline",
        "eof",
        "keep_alive",
        "loop",
        "paused",
        "server",
        "state",
        "task",
        "timer",
        "timer_at",
        "transport",
        "waiting_since",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.state = HEADING
        self.deadline = math.inf
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.waiting_since = math.inf  # since when it waits for a request: the eviction order
        self.paused = False  # the transport's write buffer is full: the client does not read
        self.keep_alive = True
        self.eof = False
        self.task: asyncio.Task | None = None
        self.admitted = False

    # ------------------------------------------------------------ deadlines

    def _expect(self, state: str, within: float) -> None:
        now = self.loop.time()
        self.state, self.deadline = state, now + within
        if state != ANSWERING and self.waiting_since == math.inf:  # kept from idle through the head
            self.waiting_since = now
        if self.deadline < self.timer_at:  # earlier than the timer: set it again (rare)
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer, self.timer_at = None, math.inf
        if self.state == CLOSED or self.deadline == math.inf:
            return
        if self.loop.time() + 0.001 < self.deadline:  # the deadline moved on since: wait for it
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self.close(self.state, abort=self.state == ANSWERING)

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.server.admit(self):
            self.state = CLOSED
            transport.close()
            return
        self.admitted = True
        self._expect(HEADING, self.server.head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.buffer = self.buffer + data if self.buffer else data
        if self.state == ANSWERING:
            if len(self.buffer) > MAX_HEAD:  # pipelined requests pile up: let them wait in the kernel
                self.transport.pause_reading()
            return
        self._next_requests()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state != ANSWERING:
            self._next_requests()
        return True  # half-closed: the answer under way still goes out

    def pause_writing(self) -> None:
        self.paused = True
        if self.state == ANSWERING and self.deadline == math.inf:
            self._expect(ANSWERING, self.server.write_timeout)

    def resume_writing(self) -> None:
        self.paused = False
        if self.state == ANSWERING and self.task is None:
            self._answered()
            self._go_on()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    # ------------------------------------------------------------ requests

    def _next_requests(self) -> None:
        """Answer every whole request in the buffer, in order, until one has to wait."""
        while self.state != CLOSED and self.state != ANSWERING:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD + 3:
                    self._refuse(TOO_LARGE)
                elif self.eof:
                    self.close(None)
                elif buffer and self.state == IDLE:  # the first byte of the next request
                    self._expect(HEADING, self.server.head_timeout)
                return
            if end > MAX_HEAD:
                self._refuse(TOO_LARGE)
                return
            self.buffer = buffer[end + 4 :]
            self._request(buffer[:end])

    def _request(self, head: bytes) -> None:
        self.state, self.deadline, self.waiting_since = ANSWERING, math.inf, math.inf
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._refuse(BAD_LINE)
            return
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            self._refuse(NO_BODIES)
            return
        connection = headers.get("connection", "")
        self.keep_alive = connection != "close" and (version == "HTTP/1.1" or "keep-alive" in connection)
        answer = self.server.answer(method, target)
        if type(answer) is tuple:
            self._send(answer, method == "HEAD")
        else:  # an endpoint that waits: the connection waits for it, within the write timeout
            self._expect(ANSWERING, self.server.write_timeout)
            self.task = self.loop.create_task(self._await(answer, method == "HEAD"))

    async def _await(self, answer: Awaitable[Response], head_only: bool) -> None:
        response = await answer
        self.task = None
        if self.state != CLOSED:
            self._send(response, head_only)
            self._go_on()

    def _refuse(self, response: Response) -> None:
        self.state, self.keep_alive = ANSWERING, False
        self._send(response, False)

    def _send(self, response: Response, head_only: bool) -> None:
        head = format_head(response, self.keep_alive)
        if head_only:
            self.transport.write(head)
        else:
            # one send for head and page: a system call costs more than copying the page
            self.transport.writelines((head, response[2]))
        if not self.paused:
            self._answered()
        elif self.deadline == math.inf:
            self._expect(ANSWERING, self.server.write_timeout)

    def _answered(self) -> None:
        """The answer is out (or in the kernel's hands): wait for the next request, or close."""
        if not self.keep_alive:
            self.close(None)
        else:
            self._expect(IDLE, self.server.idle_timeout)

    def _go_on(self) -> None:
        """After an answer that had to wait: the requests that came meanwhile (not from within
        :meth:`_next_requests`, whose loop goes on by itself: no recursion per request)."""
        if self.state == IDLE and (self.buffer or self.eof):
            self.transport.resume_reading()
            self._next_requests()

    # ------------------------------------------------------------ closing

    def close(self, reason: str | None, *, abort: bool = False) -> None:
        """Close, counting ``reason``; ``abort`` drops what the client did not read."""
        if self.state == CLOSED:
            return
        if reason is not None:
            self.server.closed(reason)
        self._forget()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _forget(self) -> None:
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.admitted:
            self.admitted = False
            self.server.forget(self)
