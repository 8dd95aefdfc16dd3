"""Environment/trainer-facing routes: sessions, rewards, trajectories, pause/resume, upstreams."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from seamless.proxy.auth import bearer, is_admin, require_admin
from seamless.proxy.errors import ApiError, parse_json_object, translate
from seamless.proxy.metrics import Metrics
from seamless.proxy.state import ProxyState, new_key
from seamless.traces.merge import merge_turns
from seamless.traces.store import EpisodeEnd

router = APIRouter()


def _state(request: Request) -> ProxyState:
    return request.app.state.proxy


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    return parse_json_object(raw) if raw else {}


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, (str, int)):
        raise ApiError(400, f"'{name}' must be a string", param=name)
    return None if value is None else str(value)


def _admin(handler):
    """Run an admin handler with the admin-key check and OpenAI-shaped errors."""
    @functools.wraps(handler)  # FastAPI reads the handler's signature through __wrapped__
    async def wrapped(request: Request, **kwargs: Any) -> Response:
        try:
            require_admin(_state(request), request)
            return await handler(request, **kwargs)
        except Exception as exc:
            return translate(exc).response()
    return wrapped


@router.post("/sessions")
@_admin
async def create_session(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be an object", param="metadata")
    sid, key = new_key()[:16], new_key()
    await state.store.create_session(sid, key, _optional_str(body, "group_id"), _optional_str(body, "task_id"),
                                     metadata)
    state.session_of_key[key] = sid
    state.metrics.sessions_created += 1
    return JSONResponse({"session_id": sid, "api_key": key, "base_url": f"{_own_url(request)}/sessions/{sid}/v1"},
                        status_code=201)


@router.post("/sessions/batch")
@_admin
async def create_sessions(request: Request) -> Response:
    """`count` sessions of one group in one call (a GRPO group's episodes): {"sessions": [...]},
    each as POST /sessions answers. `start_together: true` says their agents start at once, so
    their identical first calls may go to vLLM as one request (proxy.coalesce_window_ms)."""
    state = _state(request)
    body = await _json_object(request)
    count, metadata = body.get("count"), body.get("metadata") or {}
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_BATCH:
        raise ApiError(400, f"'count' must be a whole number from 1 to {_MAX_BATCH}", param="count")
    if not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be an object", param="metadata")
    together = body.get("start_together", False)
    if not isinstance(together, bool):
        raise ApiError(400, "'start_together' must be true or false", param="start_together")
    made = [(new_key()[:16], new_key()) for _ in range(count)]
    await state.store.create_sessions(made, _optional_str(body, "group_id"), _optional_str(body, "task_id"), metadata)
    for sid, key in made:
        state.session_of_key[key] = sid
    if state.coalescer is not None and together:
        state.coalescer.made_together([sid for sid, _ in made])
    state.metrics.sessions_created += count
    base = _own_url(request)
    return JSONResponse({"sessions": [{"session_id": sid, "api_key": key, "base_url": f"{base}/sessions/{sid}/v1"}
                                      for sid, key in made]}, status_code=201)


@router.post("/sessions/finish")
@_admin
async def finish_sessions(request: Request) -> Response:
    """Reward and finish several episodes in one call (a GRPO group's): body {"episodes": [{"session_id",
    "reward" or "turn_rewards", "discard"?}]}; an episode without a recorded call is finished as
    discarded. Answers, per episode, its number of turns and whether (and why) it was discarded."""
    state = _state(request)
    episodes = [_episode_end(item) for item in _list_of(await _json_object(request), "episodes")]
    for episode in episodes:
        await state.voids.flush(episode.session_id)  # calls the agent never got stay out of the episode
    ends = await state.store.finish_many(episodes)
    for end in ends:
        if end.api_key is not None:
            state.session_of_key.pop(end.api_key, None)
            state.pool.unpin(end.session_id)
            state.metrics.sessions_finished += 1
    await asyncio.gather(*(state.control.bus.forget_key(e.api_key) for e in ends if e.api_key is not None))
    return JSONResponse({"episodes": [{"session_id": e.session_id, "num_turns": e.num_turns,
                                       "discarded": e.discarded, "already_finished": e.already_finished}
                                      for e in ends]})


_MAX_BATCH = 4096


def _list_of(body: dict[str, Any], name: str) -> list[Any]:
    items = body.get(name)
    if not isinstance(items, list) or not 1 <= len(items) <= _MAX_BATCH:
        raise ApiError(400, f"'{name}' must be a list of 1 to {_MAX_BATCH} objects", param=name)
    return items


def _episode_end(item: Any) -> EpisodeEnd:
    if not isinstance(item, dict) or not isinstance(item.get("session_id"), str):
        raise ApiError(400, "each of 'episodes' must be an object with a 'session_id'", param="episodes")
    reward, turn_rewards = item.get("reward"), item.get("turn_rewards")
    if reward is not None and not _finite_number(reward):
        raise ApiError(400, "'reward' must be a finite number", param="reward")
    if turn_rewards is not None and not (isinstance(turn_rewards, list) and all(map(_finite_number, turn_rewards))):
        raise ApiError(400, "'turn_rewards' must be a list of finite numbers", param="turn_rewards")
    return EpisodeEnd(item["session_id"], reward, turn_rewards, _optional_str(item, "discard") or None)


@router.post("/sessions/{session_id}/reward")
@_admin
async def set_reward(request: Request, session_id: str) -> Response:
    state = _state(request)
    body = await _json_object(request)
    reward, turn_rewards = body.get("reward"), body.get("turn_rewards")
    if reward is None and turn_rewards is None:
        raise ApiError(400, "give 'reward' (a number for the episode) or 'turn_rewards' (one per turn)")
    if reward is not None and not _finite_number(reward):
        raise ApiError(400, "'reward' must be a finite number", param="reward")
    if turn_rewards is not None and not (isinstance(turn_rewards, list) and all(map(_finite_number, turn_rewards))):
        raise ApiError(400, "'turn_rewards' must be a list of finite numbers", param="turn_rewards")
    record = await state.store.session(session_id)  # 404 for an unknown session
    await state.store.set_reward(session_id, reward, turn_rewards)
    return JSONResponse({"session_id": session_id, "reward": reward, "turn_rewards": turn_rewards,
                         "num_turns": record.num_turns})


def _own_url(request: Request) -> str:
    """This server's URL as the connection reached it (the socket's address, never the Host
    header, which the client writes: a base URL built from it could send an agent elsewhere)."""
    host, port = request.scope.get("server") or ("127.0.0.1", 80)
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}"


def _plain_url(url: str) -> bool:
    """No whitespace or control characters (CR/LF would split the request line sent to it)."""
    return url.isprintable() and not any(c.isspace() for c in url) and len(url) <= 2048


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@router.post("/sessions/{session_id}/finish")
@_admin
async def finish_session(request: Request, session_id: str) -> Response:
    state = _state(request)
    body = await _json_object(request)
    discard = _optional_str(body, "discard")  # why this episode must not train (it failed)
    record = await state.store.session(session_id)
    await state.voids.flush(session_id)  # calls the agent never got stay out of the episode
    published = await state.store.finish(session_id, discard=discard or None)
    state.session_of_key.pop(record.api_key, None)
    await state.control.bus.forget_key(record.api_key)  # and the other workers' caches
    state.pool.unpin(session_id)
    if published:
        state.metrics.sessions_finished += 1
    return JSONResponse({"session_id": session_id, "status": "finished", "already_finished": not published})


@router.get("/sessions/{session_id}/trajectory")
@_admin
async def trajectory(request: Request, session_id: str) -> Response:
    state = _state(request)
    record = await state.store.session(session_id)
    recorded = await state.store.turns_with_requests(session_id)
    turns = [turn for turn, _ in recorded]
    # ?train_constrained=true: the sequences as a recipe with rollout.train_constrained trains them
    train_constrained = request.query_params.get("train_constrained", "").lower() in ("1", "true")
    sequences, branches = merge_turns(turns, reward=record.reward or 0.0, group_id=record.group_id,
                                      task_id=record.task_id, train_constrained=train_constrained)
    return JSONResponse({
        "session_id": session_id, "status": record.status, "reward": record.reward,
        "turn_rewards": record.turn_rewards, "group_id": record.group_id, "task_id": record.task_id,
        "metadata": record.metadata, "num_branches": branches,
        "turns": [{"index": t.index, "prompt_token_ids": t.prompt_token_ids,
                   "completion_token_ids": t.completion_token_ids, "logprobs": t.completion_logprobs,
                   "weight_versions": t.weight_versions, "finish_reason": t.finish_reason,
                   "upstream": t.upstream, "started_at": t.started_at, "ended_at": t.ended_at,
                   "sent_at": t.sent_at, "answered_at": t.answered_at, "first_token_at": t.first_token_at,
                   "constraints": list(t.constraints), "request": request_body} for t, request_body in recorded],
        "sequences": [{"token_ids": s.token_ids, "loss_mask": s.loss_mask, "logprobs": s.rollout_logprobs,
                       "weight_versions": s.weight_versions, "reward": s.reward} for s in sequences],
    })


@router.post("/admin/pause")
@_admin
async def pause(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
    mode = body.get("mode", "keep")
    if mode not in ("keep", "abort"):
        raise ApiError(400, "'mode' must be 'keep' (freeze in-flight calls) or 'abort'", param="mode")
    await state.control.pause(mode)
    return JSONResponse({"paused": True, "mode": mode, "weight_version": state.pool.version})


@router.post("/admin/resume")
@_admin
async def resume(request: Request) -> Response:
    state = _state(request)
    body = await _json_object(request)
    version = body.get("weight_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise ApiError(400, "'weight_version' must be a non-negative integer", param="weight_version")
    salt = body.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise ApiError(400, "'cache_salt' must be a string (\"\" turns salting off)", param="cache_salt")
    await state.control.resume(version, salt)
    return JSONResponse({"paused": False, "weight_version": state.pool.version,
                         "cache_salt": state.pool.cache_salt})


@router.get("/admin/upstreams")
@_admin
async def list_upstreams(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"upstreams": [u.as_dict() for u in state.pool.upstreams.values()],
                         "paused": state.pool.paused, "weight_version": state.pool.version,
                         "continuations": state.pool.continuations, "cache_salt": state.pool.cache_salt,
                         "failovers": [vars(e) for e in state.pool.failovers[-100:]]})


@router.post("/admin/upstreams")
@_admin
async def add_upstream(request: Request) -> Response:
    body = await _json_object(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or not _plain_url(url):
        raise ApiError(400, "'url' must be the http(s) base URL of a vLLM server, e.g. http://127.0.0.1:8000",
                       param="url")
    upstream = await _state(request).control.add(url)
    return JSONResponse(upstream.as_dict(), status_code=201)


@router.delete("/admin/upstreams")
@_admin
async def remove_upstream(request: Request) -> Response:
    body = await _json_object(request)
    url = body.get("url") or request.query_params.get("url")
    if not isinstance(url, str):
        raise ApiError(400, "give the server's 'url' (JSON body or ?url=)", param="url")
    if not await _state(request).control.remove(url):
        raise ApiError(404, f"no upstream {url} is registered", "not_found_error")
    return JSONResponse({"removed": url})


@router.get("/health")
async def health(request: Request) -> Response:
    """503 "unhealthy" while the proxy itself is broken (Redis unreachable, the control bus away,
    health checks not running); 200 "degraded" while it works but no server is healthy, else 200
    "ok". Without the admin key only the status: upstream URLs and counters are not public."""
    state = _state(request)
    healthy = sum(u.healthy for u in state.pool.upstreams.values())
    store = await _store_answers(state)
    control = state.control.bus.connected
    checks = state.pool.health_checks_current(state.settings.health_interval_s)
    status = "unhealthy" if not (store and control and checks) else "ok" if healthy else "degraded"
    body: dict[str, Any] = {"status": status}
    if is_admin(state, bearer(request)):
        body |= {"store": store, "control": control, "health_checks": checks,
                 "control_error": "" if control else state.control.bus.last_error,
                 "pending_voids": len(state.voids.pending),
                 "healthy_upstreams": healthy, "upstreams": len(state.pool.upstreams),
                 "paused": state.pool.paused, "weight_version": state.pool.version, "worker": os.getpid()}
    return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)


async def _store_answers(state: ProxyState, timeout_s: float = 2.0) -> bool:
    """Whether Redis answers a PING soon (a stopped Redis would hold it forever)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await state.store.ping()
    except (TimeoutError, redis.RedisError, OSError):
        return False


@router.get("/metrics")
@_admin  # counters and upstream URLs are the operator's, not the public's
async def metrics(request: Request) -> Response:
    state = _state(request)
    metrics = state.metrics
    if state.settings.workers > 1:  # every worker's counters: the others' last shared, this one's now
        shared = await state.store.redis.hgetall(state.control.bus.keys.metrics)
        others = [json.loads(v) for k, v in shared.items() if k.decode() != str(os.getpid())]
        metrics = Metrics.total([*others, metrics.snapshot()])
    return PlainTextResponse(metrics.render([u.as_dict() for u in state.pool.upstreams.values()]),
                             media_type="text/plain; version=0.0.4")


@router.get("/openapi.json")
@_admin
async def openapi(request: Request) -> Response:
    """The API schema, for the operator only (it lists every route)."""
    return JSONResponse(request.app.openapi())
