"""Admin changes that every proxy worker must see: upstreams joining or leaving, the pause gate,
the weight version and cache salt.

`seamless proxy --workers N` runs N processes on one port; an admin call lands on one of them.
That worker changes the shared state in Redis, then publishes the change and waits until every
worker has applied it (each acknowledges on a list), and only then talks to the servers. So when
`/admin/resume` resumes the servers, every worker already stamps new tokens with the new
version, and a paused gate holds new agent calls in every worker, not only in the one that was
asked. A worker that starts (or restarts) reads the state first. With one worker the same path
runs; it costs a Redis round trip per admin call, never one per agent call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

import redis.asyncio as aioredis

from seamless.errors import UpstreamUnavailable
from seamless.store import Keys

log = logging.getLogger("seamless.proxy")

OpKind = Literal["add", "remove", "gate", "version"]


@dataclass(frozen=True)
class ControlOp:
    """One change to the pool's shared state."""

    kind: OpKind
    url: str | None = None
    model: str | None = None
    paused: bool | None = None
    mode: str | None = None
    version: int | None = None
    cache_salt: str | None = None
    """`None`: unchanged; "" turns salting off."""


class ControlBus:
    """Publishes ControlOps to all workers (`broadcast`) and applies the ones it receives (`listen`)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, workers: int,
                 apply: Callable[[ControlOp], Awaitable[None]], timeout_s: float = 15.0) -> None:
        self.redis = redis
        self.keys = Keys(prefix).proxy  # the schema lives with the rest of the run's, in store.py
        self.workers = workers
        self.apply = apply
        self.timeout_s = timeout_s
        self._subscribed = asyncio.Event()

    async def listen(self) -> None:
        """Apply the stored state, then every published op, acknowledging each; runs until cancelled."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.channel)
        try:
            for op in await self._stored_ops():
                await self.apply(op)
            self._subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                payload = json.loads(message["data"])
                try:
                    await self.apply(ControlOp(**payload["op"]))
                finally:
                    await self.redis.rpush(self.keys.acks(payload["id"]), b"1")
        finally:
            await pubsub.aclose()

    async def ready(self) -> None:
        await self._subscribed.wait()

    async def _stored_ops(self) -> list[ControlOp]:
        state = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(self.keys.state)).items()}
        upstreams = await self.redis.hgetall(self.keys.upstreams)
        ops = [ControlOp("add", url=url.decode(), model=model.decode()) for url, model in upstreams.items()]
        if "version" in state or "cache_salt" in state:
            ops.append(ControlOp("version", version=int(state.get("version", 0)),
                                 cache_salt=state.get("cache_salt")))
        if state.get("paused") == "1":
            ops.append(ControlOp("gate", paused=True, mode=state.get("mode", "keep")))
        return ops

    async def broadcast(self, op: ControlOp) -> None:
        """Store the change, publish it, and return once every worker has applied it."""
        await self.remember(op)
        op_id = secrets.token_hex(8)
        acks = self.keys.acks(op_id)
        await self.redis.publish(self.keys.channel, json.dumps({"id": op_id, "op": asdict(op)}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        got = 0
        try:
            while got < self.workers:
                left = deadline - loop.time()
                if left <= 0:
                    raise UpstreamUnavailable(
                        f"{got} of {self.workers} proxy workers applied '{op.kind}' within {self.timeout_s:g} s; "
                        "a worker is down or stuck (see the proxy's log)")
                if await self.redis.blpop([acks], timeout=min(left, 1.0)) is not None:
                    got += 1
        finally:
            await self.redis.delete(acks)

    async def remember(self, op: ControlOp) -> None:
        """Keep the change in Redis, for workers that start later."""
        if op.kind == "add":
            await self.redis.hset(self.keys.upstreams, op.url, op.model)
        elif op.kind == "remove":
            await self.redis.hdel(self.keys.upstreams, op.url)
        elif op.kind == "gate":
            await self.redis.hset(self.keys.state, mapping={"paused": "1" if op.paused else "0",
                                                            "mode": op.mode or "keep"})
        elif op.kind == "version":
            fields = {}
            if op.version is not None:
                fields["version"] = str(op.version)
            if op.cache_salt is not None:
                fields["cache_salt"] = op.cache_salt
            if fields:
                await self.redis.hset(self.keys.state, mapping=fields)
