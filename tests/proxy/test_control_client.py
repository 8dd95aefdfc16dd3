"""The proxy's control client: a server lost while a request is set up counts as a failed server."""

import asyncio

import httpx
import pytest

from seamless.proxy.control import ControlOp
from seamless.proxy.control_client import LostSocketAsConnectError, control_client
from seamless.proxy.upstreams import UpstreamPool


class _SocketGoneTransport(httpx.AsyncBaseTransport):
    """What httpcore on anyio raised when a stand-in server's listening socket closed mid-resume."""

    def __init__(self, error: AttributeError) -> None:
        self.error = error
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise self.error


LOST = AttributeError("'NoneType' object has no attribute 'getpeername'")


async def test_a_socket_lost_mid_request_is_a_connect_error_and_the_resume_marks_the_server_failed():
    inner = _SocketGoneTransport(LOST)
    async with httpx.AsyncClient(transport=LostSocketAsConnectError(inner)) as client:
        with pytest.raises(httpx.ConnectError, match="lost while it was being set up"):
            await client.post("http://127.0.0.2:8000/resume")
        pool = UpstreamPool(client)
        await pool.apply(ControlOp("add", url="http://127.0.0.2:8000", model="tiny"))
        await pool.resume_servers()  # before the wrapper: AttributeError escaped, /admin/resume said 500
    assert inner.calls == 2
    assert not pool.upstreams["http://127.0.0.2:8000"].healthy


async def test_any_other_attribute_error_is_a_bug_and_is_not_hidden():
    bug = AttributeError("'Upstream' object has no attribute 'nope'")
    async with httpx.AsyncClient(transport=LostSocketAsConnectError(_SocketGoneTransport(bug))) as client:
        with pytest.raises(AttributeError, match="nope"):
            await client.get("http://127.0.0.2:8000/health")


async def test_the_control_client_still_talks_to_a_real_server():
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, control_client(5.0) as client:
        response = await client.get(f"http://127.0.0.1:{port}/health")
    assert response.status_code == 200 and response.text == "ok"
