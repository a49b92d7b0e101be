"""One HTTP/1.1 client connection of the push outputs, on the transport directly (an ``asyncio.Protocol``).

:class:`outputs._asyncio_transport.AsyncioTransport` keeps a pool of these. A connection carries one
request at a time: :meth:`ClientConnection.request` writes the head and the body and waits
for the answer, which :meth:`ClientConnection.data_received` parses as it arrives, with no
task and no reader: the status line and header fields (1xx interim answers skipped), then a
body framed by ``Content-Length``, by chunks, or by the end of the connection.

At most ``limit`` bytes of body are kept: once that many have arrived and more are to come,
the answer ends there and the connection is closed rather than read to the end (an error page
of many megabytes is not worth reading). A connection is offered for the next request only when
its answer was read whole, both sides said keep-alive and nothing else arrived; one the server
closed, or one that went wrong in any way, is never used again. An answer cut short (the
server closed or reset the connection before its end) fails the request.
"""

from __future__ import annotations

import asyncio

from outputs._transport import Headers, Response, TransportError

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 1024
# parser states
HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, UNTIL_CLOSE, IDLE = range(8)


class ClientConnection(asyncio.Protocol):
    """See the module docstring. ``usable`` says whether it may carry another request."""

    __slots__ = (
        "_body",
        "_buffer",
        "_keep_alive",
        "_limit",
        "_remaining",
        "_response",
        "_state",
        "_waiter",
        "idle_since",
        "transport",
        "usable",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.usable = False  # connected, idle, and nothing says it cannot carry a request
        self.idle_since = 0.0  # loop time the last answer ended (the pool closes long-idle ones)
        self._waiter: asyncio.Future[Response] | None = None
        self._state = IDLE
        self._buffer = b""
        self._body = bytearray()
        self._limit = 0
        self._remaining = 0
        self._keep_alive = False
        self._response: tuple[int, Headers] | None = None

    # ------------------------------------------------------------ the request

    async def request(self, head: bytes, body: bytes, limit: int) -> Response:
        """Send one request (``head`` ends with its blank line) and return the answer."""
        if not self.usable or self.transport is None:
            raise TransportError("the connection was closed before the request was sent")
        self.usable = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._state, self._limit, self._body, self._response = HEAD, limit, bytearray(), None
        self.transport.writelines((head, body))
        return await self._waiter

    def abort(self) -> None:
        """Drop the connection at once (a request given up: its answer could still arrive)."""
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.usable = True

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the next answer could not be told apart from them
            return
        self._buffer = self._buffer + data if self._buffer else data
        try:
            self._parse()
        except TransportError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._state == UNTIL_CLOSE:
            self._keep_alive = False
            self._finish()
        elif self._state != IDLE:
            self._fail(TransportError(self._cut_short()))
        self.usable = False
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._state == UNTIL_CLOSE and exc is None:
            self._keep_alive = False
            self._finish()
        elif self._state != IDLE:
            self._fail(exc if isinstance(exc, OSError) else TransportError(self._cut_short()))

    def _cut_short(self) -> str:
        if self._state == HEAD and not self._buffer and self._response is None:
            return "the server closed the connection without answering"
        return "the server closed the connection in the middle of its answer"

    # ------------------------------------------------------------ parsing

    def _parse(self) -> None:
        while self._buffer and self._state != IDLE:
            state = self._state
            if state == HEAD:
                if not self._head():
                    return
            elif state in (LENGTH, UNTIL_CLOSE, CHUNK_DATA):
                self._take_body()
            elif state in (CHUNK_SIZE, CHUNK_END, TRAILERS):
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_CHUNK_LINE:
                        raise TransportError("a chunk line of the answer is too long")
                    return
                line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                self._chunk_line(state, line)

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise TransportError("the answer's head is too large")
            return False
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        lines = head.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise TransportError(f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        status = int(code)
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            name = name.strip().lower()
            if not sep or not name:
                raise TransportError(f"a malformed header line in the answer: {line[:60]!r}")
            value = value.strip(" \t")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        if 100 <= status < 200:
            if status == 101:
                raise TransportError("the server switched protocols")
            return True  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        connection = fields.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        self._response = (status, Headers(fields))
        if status == 204 or status == 304:
            self._finish()
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            self._state = CHUNK_SIZE
        elif "content-length" in fields:
            length = fields["content-length"]
            if not length.isdigit():  # also two different lengths joined by ", "
                raise TransportError(f"the answer's Content-Length is not a number: {length[:40]!r}")
            self._remaining = int(length)
            self._state = LENGTH
            if not self._remaining:
                self._finish()
        else:
            self._state = UNTIL_CLOSE
        return True

    def _take_body(self) -> None:
        data = self._buffer
        if self._state != UNTIL_CLOSE:
            data = data[: self._remaining]
            self._remaining -= len(data)
        self._buffer = self._buffer[len(data) :]
        room = self._limit - len(self._body)
        self._body += data[:room]
        if self._state == LENGTH and not self._remaining:
            self._finish()
        elif len(data) >= room:  # the limit is reached and more is to come: the answer ends here
            self._keep_alive = False
            self._finish()
        elif self._state == CHUNK_DATA and not self._remaining:
            self._state = CHUNK_END

    def _chunk_line(self, state: int, line: bytes) -> None:
        if state == CHUNK_END:
            if line:
                raise TransportError("a chunk of the answer does not end where its size says")
            self._state = CHUNK_SIZE
        elif state == CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                self._remaining = int(size, 16)
            except ValueError:
                raise TransportError(f"a malformed chunk size in the answer: {size[:20]!r}") from None
            self._state = CHUNK_DATA if self._remaining else TRAILERS
        elif not line:  # the blank line after the trailers: the answer is whole
            self._finish()

    def _finish(self) -> None:
        status, headers = self._response  # type: ignore[misc]
        body = bytes(self._body)
        self._state, self._body, self._response = IDLE, bytearray(), None
        waiter, self._waiter = self._waiter, None
        if self._keep_alive and not self._buffer and self.transport is not None and not self.transport.is_closing():
            self.usable = True
            self.idle_since = asyncio.get_running_loop().time()
        else:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, headers, body))

    def _fail(self, exc: Exception) -> None:
        self._state, self._buffer = IDLE, b""
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
