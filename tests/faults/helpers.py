"""What the fault tests share: a TCP relay that plays a server going away and coming back, and
small waits that poll a condition instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import httpx

from seamless.services.process import free_port


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Seconds until `condition()` held; fails the test with `what` after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def health(proxy, admin: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {proxy.admin_key}", "Connection": "close"} if admin else {}
    return httpx.get(f"{proxy.url}/health", headers=headers, timeout=30)


class TcpRelay:
    """127.0.0.1:port -> target: a real server behind a link the test can cut (`stop`: every
    connection closed, nothing listens) and restore (`start`: the same port again)."""

    def __init__(self, target_url: str, cut_after_bytes: int | None = None) -> None:
        """`cut_after_bytes`: a connection whose answer grows past this many bytes is cut there
        (a server that dies mid-call, on every call through this relay)."""
        self.cut_after_bytes = cut_after_bytes
        self.cuts = 0
        host_port = httpx.URL(target_url)
        self.target = (host_port.host, host_port.port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
                    if limit is not None and sent > limit:
                        self.cuts += 1
                        up_writer.transport.abort()
                        break
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, None), pipe(up_reader, writer, self.cut_after_bytes))
        self._writers -= {writer, up_writer}
