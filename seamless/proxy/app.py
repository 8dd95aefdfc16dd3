"""The proxy's ASGI app: state made in the lifespan, routes, one exception mapping; the agents'
POST routes in front of FastAPI (see openai_routes.AgentAPI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator

import redis
from fastapi import FastAPI

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from seamless.proxy import admin_routes, openai_routes, vllm_routes
from seamless.proxy.control import ControlBus, ControlOp
from seamless.proxy.control_client import control_client
from seamless.proxy.coalesce import Coalescer
from seamless.proxy.delivery import VoidLedger
from seamless.proxy.errors import handle_exception, handle_http_exception, handle_validation_error
from seamless.proxy.state import SETTINGS_ENV, ProxySettings, ProxyState
from seamless.proxy.upstream_http import UpstreamHTTP
from seamless.proxy.upstreams import PoolControl, UpstreamPool
from seamless.services.network import server_headers
from seamless.traces.store import TraceStore

log = logging.getLogger("seamless.proxy")


def app_from_environment() -> openai_routes.AgentAPI:
    """The app of one worker of `seamless proxy --workers N` (uvicorn's factory)."""
    return create_app(ProxySettings.model_validate_json(os.environ[SETTINGS_ENV]))


def create_app(settings: ProxySettings) -> openai_routes.AgentAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # httpx for control traffic (health, pause/resume); agent calls go through UpstreamHTTP
        async with control_client(settings.upstream_timeout_s) as client:
            store = TraceStore(settings.store_url, settings.key_prefix)
            pool = UpstreamPool(client)
            session_of_key: dict[str, str] = {}
            bus = ControlBus(store.redis, settings.key_prefix, settings.workers, pool.apply,
                             forget=lambda key: session_of_key.pop(key, None))
            upstream_http = UpstreamHTTP(headers=server_headers())
            voids = VoidLedger(store)
            state = ProxyState(settings=settings, store=store, client=client, pool=pool,
                               upstream_http=upstream_http, control=PoolControl(pool, bus), voids=voids,
                               session_of_key=session_of_key)
            if settings.coalesce_window_ms > 0:
                state.coalescer = Coalescer(settings.coalesce_window_ms / 1000, settings.max_n, state.metrics)
            app.state.proxy = state
            try:
                await store.ping()
                # none of these tasks ends by itself (each retries what fails): a task that ended the
                # group would cancel the others and close the clients, leaving a half-dead proxy
                async with asyncio.TaskGroup() as tasks:
                    listening = tasks.create_task(bus.listen())
                    await bus.ready()  # the shared pool state is applied before any request is served
                    for url in (u.rstrip("/") for u in settings.upstreams):  # every worker registers these itself
                        op = ControlOp("add", url=url, model=await pool.probe(url))
                        await pool.apply(op)
                        await bus.remember(op)
                    health = tasks.create_task(pool.health_loop(settings.health_interval_s))
                    shared = tasks.create_task(_share_metrics(state)) if settings.workers > 1 else None
                    voiding = tasks.create_task(voids.run())
                    with contextlib.suppress(redis.RedisError, OSError):  # a Redis away: the watcher retries
                        await voids.recover()  # a predecessor's calls in doubt, before serving
                    watching = tasks.create_task(voids.watch_workers())
                    yield
                    for task in (health, listening, shared, voiding, watching):
                        if task is not None:
                            task.cancel()
                # a clean stop leaves no delivered call in doubt (the next proxy would void it)
                await voids.flush_delivered()
            finally:
                await upstream_http.aclose()
                await store.close()

    app = FastAPI(title="seamless trajectory manager", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # served by admin_routes, behind the admin key
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(vllm_routes.router)
    app.add_exception_handler(Exception, handle_exception)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    return openai_routes.AgentAPI(app)


async def _share_metrics(state: ProxyState) -> None:
    """With several workers, each keeps its counters in Redis so /metrics on any of them sums all."""
    while True:
        try:
            await state.store.redis.hset(state.control.bus.keys.metrics, str(os.getpid()),
                                         json.dumps(state.metrics.snapshot()))
        except redis.RedisError as exc:  # Redis away: /health says so; the next round tries again
            log.debug("sharing metrics failed: %r", exc)
        await asyncio.sleep(min(1.0, state.settings.health_interval_s))
