"""The proxy's httpx client for control traffic to the servers (probes, health checks, pause and
resume, detokenize, tito), and the one transport fault it normalises.

A server whose node dies while a request is being set up can make httpcore (on anyio) raise
`AttributeError: 'NoneType' object has no attribute 'getpeername'` from the socket it just lost,
instead of a connection error. Every caller handles a server that fails as `httpx.HTTPError` (mark
it failed, go on without it); an AttributeError escaped them and failed a whole weight update
(POST /admin/resume answered 500). The transport below turns that one fault into the
`httpx.ConnectError` it stands for, so those handlers see it.
"""

from __future__ import annotations

import httpx

from seamless.services.network import server_headers


class LostSocketAsConnectError(httpx.AsyncBaseTransport):
    """Wraps a transport: a request whose socket vanished under it fails as `httpx.ConnectError`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except AttributeError as exc:
            if "NoneType" not in str(exc):  # a bug of ours or httpx's: not a lost server
                raise
            raise httpx.ConnectError(f"connection to {request.url.host}:{request.url.port} lost while "
                                     f"it was being set up ({exc})", request=request) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def control_client(timeout_s: float) -> httpx.AsyncClient:
    """The shared client; the servers' API key ($SEAMLESS_VLLM_API_KEY) goes with every call."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    transport = LostSocketAsConnectError(httpx.AsyncHTTPTransport(limits=limits))
    return httpx.AsyncClient(transport=transport, timeout=timeout_s, headers=server_headers())
