"""Settings and the shared state of one running proxy (made in the app's lifespan)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import httpx

from seamless.config import ProxyConfig
from seamless.proxy.coalesce import Coalescer
from seamless.proxy.delivery import VoidLedger
from seamless.proxy.metrics import Metrics
from seamless.proxy.upstream_http import UpstreamHTTP
from seamless.proxy.upstreams import PoolControl, UpstreamPool
from seamless.traces.store import TraceStore


SETTINGS_ENV = "SEAMLESS_PROXY_SETTINGS"
"""How `seamless proxy --workers N` hands its settings (JSON) to the worker processes."""


class ProxySettings(ProxyConfig):
    """A running proxy's settings: its config (the recipe's `proxy` section, or the flags of
    `seamless proxy`) plus what the run wires in."""

    store_url: str
    """The Redis the proxy records into."""
    key_prefix: str
    """Prefix of this run's Redis keys."""
    admin_key: str
    """Key for admin routes (resolved: no longer optional)."""
    upstreams: tuple[str, ...] = ()
    """vLLM servers to start with; more can be registered over the admin API."""


def new_key() -> str:
    """An unguessable key (192 bits)."""
    return secrets.token_urlsafe(24)


@dataclass
class ProxyState:
    settings: ProxySettings
    store: TraceStore
    client: httpx.AsyncClient
    pool: UpstreamPool
    upstream_http: UpstreamHTTP
    control: PoolControl
    voids: VoidLedger
    metrics: Metrics = field(default_factory=Metrics)
    session_of_key: dict[str, str] = field(default_factory=dict)
    """Cache of agent key -> session id (the store is the source of truth)."""
    coalescer: Coalescer | None = None
    """Merges identical calls of different sessions (proxy.coalesce_window_ms above 0)."""
