"""Keep-alive HTTP/1.1 POSTs to the rollout servers, read as they stream: the proxy's hot path.

Every agent call costs one upstream request, and on this path httpx spent more time than all of
the proxy's own work (its per-read timeouts, request/response models and anyio layers cost
about 1 ms a call here). The proxy needs one thing only: POST a JSON body to a known server and
read the streamed answer. This client does that with an asyncio protocol and httptools' C parser
(chunked or sized bodies), one connection per in-flight call, idle connections reused.

Control traffic (health checks, pause/resume, weight updates) stays on httpx: it is rare.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools


class UpstreamConnectionError(Exception):
    """The server could not be reached, or dropped the connection before answering: the call
    never reached a model, so it may go to another server."""


class UpstreamStreamError(Exception):
    """The server dropped the connection (or timed out) after it had started answering."""


class _Connection(asyncio.Protocol):
    """One TCP connection; parses one response at a time."""

    def __init__(self, origin: tuple[str, int, bool]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._parser: httptools.HttpResponseParser | None = None
        self._wake: asyncio.Future | None = None
        self.reset()

    def reset(self) -> None:
        """Ready for the next response on this connection."""
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.body: collections.deque[bytes] = collections.deque()
        self.error: BaseException | None = None
        self.received_any = False
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamStreamError(f"malformed HTTP response from {self.origin}: {exc}")
            self.transport.close()
        self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.complete and self.error is None:
            self.error = exc or ConnectionResetError("connection closed by the server")
        self._notify()

    # httptools callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()

    # waiting ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Until more arrived (or the connection ended)."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None


class UpstreamResponse:
    """A response being received; read it with `aiter_raw()` or `aread()`, then `aclose()`."""

    def __init__(self, client: UpstreamHTTP, conn: _Connection, deadline: asyncio.TimerHandle,
                 sent_at: float) -> None:
        self.sent_at = sent_at
        """Wall clock when the request was handed to the connection (the call's trace keeps it)."""
        self.answered_at = time.time()
        """Wall clock when the server's headers arrived."""
        self._client = client
        self._conn = conn
        self._deadline = deadline
        self.status_code = conn.status
        self._closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            while conn.body:
                yield conn.body.popleft()
            if conn.complete:
                return
            if conn.error is not None:
                raise UpstreamStreamError(f"{conn.error!r}")
            await conn.wait()

    async def aread(self) -> bytes:
        return b"".join([part async for part in self.aiter_raw()])

    async def aclose(self) -> None:
        """Give the connection back when the response was read to its end; close it otherwise
        (which is also how an abandoned call aborts its request on the server)."""
        if self._closed:
            return
        self._closed = True
        self._deadline.cancel()
        conn = self._conn
        if conn.complete and conn.error is None and conn.keep_alive and not conn.lost:
            self._client._release(conn)
        else:
            conn.transport.close()


class UpstreamHTTP:
    """A pool of keep-alive connections per server; `post` starts a call and returns at its headers."""

    def __init__(self, connect_timeout_s: float = 5.0, max_idle_per_server: int = 256,
                 headers: dict[str, str] | None = None) -> None:
        self.connect_timeout_s = connect_timeout_s
        # sent with every call (the servers' API key); header injection is impossible by construction
        self._extra_head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()
                                   if "\r" not in k + v and "\n" not in k + v)
        self.max_idle_per_server = max_idle_per_server
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = collections.defaultdict(list)

    async def post(self, url: str, body: bytes, timeout_s: float) -> UpstreamResponse:
        """POST `body` (JSON) to `url`; `timeout_s` bounds the whole call, headers to last byte."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        origin = (parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{self._extra_head}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sent_at = time.time()
        conn, reused = self._take_idle(origin), True
        if conn is None:
            conn, reused = await self._connect(origin), False
        try:
            return await self._send(conn, head + body, timeout_s, sent_at)
        except UpstreamConnectionError:
            if not reused:
                raise
        # a kept-alive connection the server had just closed: the request never reached it
        return await self._send(await self._connect(origin), head + body, timeout_s, sent_at)

    async def _send(self, conn: _Connection, request: bytes, timeout_s: float, sent_at: float) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        conn.reset()
        conn.transport.write(request)

        def expire() -> None:
            if not conn.complete:
                conn.error = TimeoutError(f"no complete answer within {timeout_s:g} s")
                conn.transport.close()
                conn._notify()

        deadline = loop.call_later(timeout_s, expire)
        while not conn.headers_done:
            if conn.error is not None:
                deadline.cancel()
                conn.transport.close()
                if conn.received_any:
                    raise UpstreamStreamError(f"{conn.error!r}")
                raise UpstreamConnectionError(f"{conn.origin[0]}:{conn.origin[1]} dropped the connection: "
                                              f"{conn.error!r}")
            await conn.wait()
        return UpstreamResponse(self, conn, deadline, sent_at)

    def _take_idle(self, origin: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.lost and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        idle = self._idle[conn.origin]
        if len(idle) < self.max_idle_per_server:
            idle.append(conn)
        else:
            conn.transport.close()

    async def _connect(self, origin: tuple[str, int, bool]) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, tls = origin
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(origin), host, port,
                                                       ssl=ssl.create_default_context() if tls else None)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectionError(f"cannot connect to {origin[0]}:{origin[1]}: {exc!r}") from exc
        return conn

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.transport.close()
        self._idle.clear()
