"""The proxy's ASGI app: state made in the lifespan, routes, one exception mapping; the agents'
POST routes in front of FastAPI (see openai_routes.AgentAPI)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from seamless.proxy import admin_routes, openai_routes
from seamless.proxy.errors import handle_exception
from seamless.proxy.state import ProxySettings, ProxyState
from seamless.proxy.upstream_http import UpstreamHTTP
from seamless.proxy.upstreams import UpstreamPool
from seamless.store import TraceStore

log = logging.getLogger("seamless.proxy")


def create_app(settings: ProxySettings) -> openai_routes.AgentAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # httpx for control traffic (health, pause/resume); agent calls go through UpstreamHTTP
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=settings.upstream_timeout_s) as client:
            store = TraceStore(settings.store_url, settings.key_prefix)
            pool = UpstreamPool(client)
            upstream_http = UpstreamHTTP()
            state = ProxyState(settings=settings, store=store, client=client, pool=pool,
                               upstream_http=upstream_http)
            app.state.proxy = state
            try:
                await store.ping()
                for url in settings.upstreams:
                    await pool.add(url)
                async with asyncio.TaskGroup() as tasks:
                    health = tasks.create_task(pool.health_loop(settings.health_interval_s))
                    yield
                    health.cancel()
            finally:
                await upstream_http.aclose()
                await store.close()

    app = FastAPI(title="seamless trajectory manager", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)
    app.add_exception_handler(Exception, handle_exception)
    return openai_routes.AgentAPI(app)
