"""Many episodes through one client: the `X-Session-ID` header.

Frameworks that hold one OpenAI client for many rollouts (verifiers' `evaluate`, a pool of
LangChain agents) cannot give each rollout its own base URL. They can send a header instead:
a call made with session S's key and `X-Session-ID: E` is recorded in the episode session
`S.E`, created on its first call (same group as S, task id E, metadata naming S), so each rollout
is its own trajectory. The key still reaches only its own session's episodes (`S.*`), never
another session's; an episode session has no key of its own, so only the admin (the environment
or trainer) reads, rewards and finishes it, as any other session (`GET /sessions/S/episodes`
lists them).
"""

from __future__ import annotations

import re

from seamless.errors import UnknownSession
from seamless.proxy.errors import ApiError
from seamless.proxy.state import ProxyState, new_key

HEADER = b"x-session-id"
_EPISODE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def episodes_key(state: ProxyState, parent: str) -> str:
    """Redis set of the episode ids a session has started."""
    return f"{state.settings.key_prefix}:episodes:{parent}"


async def resolve(state: ProxyState, parent: str, header: bytes | None) -> str:
    """The session a call records into: `parent`, or its episode named by the header."""
    if not header:
        return parent
    episode = header.decode("latin-1").strip()
    if not _EPISODE.match(episode):
        raise ApiError(400, "X-Session-ID must be 1-128 characters of letters, digits and _ . : -",
                       param="X-Session-ID")
    sid = f"{parent}.{episode}"
    if await state.store.redis.sadd(episodes_key(state, parent), episode):
        parent_record = await state.store.session(parent)
        await state.store.create_session(sid, new_key(), parent_record.group_id, episode,
                                         {"parent_session": parent, "episode": episode})
        return sid
    try:
        record = await state.store.session(sid)
    except UnknownSession:
        return sid  # a concurrent first call is creating it
    if record.status != "open":
        raise ApiError(409, f"episode {episode!r} of this session has finished; use a new X-Session-ID",
                       "conflict", param="X-Session-ID")
    return sid


async def list_episodes(state: ProxyState, parent: str) -> list[str]:
    """The episode session ids of `parent`, in no particular order."""
    members = await state.store.redis.smembers(episodes_key(state, parent))
    return sorted(f"{parent}.{m.decode()}" for m in members)
