"""The proxy's upstream HTTP client against small local servers that misbehave on purpose."""

import asyncio

import pytest

from seamless.proxy.upstream_http import UpstreamConnectionError, UpstreamHTTP, UpstreamStreamError
from seamless.services.process import free_port


async def _serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_chunked_stream_then_keep_alive_reuse_then_a_closed_idle_connection_is_replaced():
    connections = []

    async def handler(reader, writer):
        connections.append(writer)
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: " + body + b"\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        if len(connections) == 1:  # the first connection serves a second request, then closes while idle
            body = await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    client = UpstreamHTTP()
    async with server:
        response = await client.post(url + "/v1/x", b'{"a":1}', timeout_s=10)
        assert response.status_code == 200 and await response.aread() == b'data: 1\n\ndata: {"a":1}\n\n'
        await response.aclose()
        second = await client.post(url + "/v1/x", b"{}", timeout_s=10)
        assert await second.aread() == b"ok" and len(connections) == 1  # kept alive and reused
        await second.aclose()
        await asyncio.sleep(0.05)  # the server has closed that connection by now
        third = await client.post(url + "/v1/x", b"{}", timeout_s=10)
        assert await third.aread() == b'data: 1\n\ndata: {}\n\n' and len(connections) == 2
        await third.aclose()
    await client.aclose()


async def test_refused_connection_and_a_silent_server_are_told_apart():
    client = UpstreamHTTP(connect_timeout_s=2)
    with pytest.raises(UpstreamConnectionError, match="cannot connect"):
        await client.post(f"http://127.0.0.1:{free_port()}/v1/x", b"{}", timeout_s=5)

    async def half_answer(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    server, url = await _serve(half_answer)
    async with server:
        response = await client.post(url, b"{}", timeout_s=0.5)
        parts = []
        with pytest.raises(UpstreamStreamError, match="no complete answer within 0.5 s"):
            async for part in response.aiter_raw():
                parts.append(part)
        assert parts == [b"hello"]
        await response.aclose()
    await client.aclose()
