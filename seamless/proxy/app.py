"""The proxy's ASGI app: state made in the lifespan, routes, one exception mapping."""

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
from seamless.proxy.upstreams import UpstreamPool
from seamless.store import TraceStore

log = logging.getLogger("seamless.proxy")


def create_app(settings: ProxySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one client for every upstream call; pool sized for hundreds of concurrent sessions
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        async with httpx.AsyncClient(limits=limits, timeout=settings.upstream_timeout_s) as client:
            store = TraceStore(settings.store_url, settings.key_prefix)
            pool = UpstreamPool(client)
            state = ProxyState(settings=settings, store=store, client=client, pool=pool)
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
                await store.close()

    app = FastAPI(title="seamless trajectory manager", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)
    app.add_exception_handler(Exception, handle_exception)
    return app
