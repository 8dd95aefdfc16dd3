"""Settings and the shared state of one running proxy (made in the app's lifespan)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import httpx

from seamless.proxy.delivery import VoidLedger
from seamless.proxy.metrics import Metrics
from seamless.proxy.upstream_http import UpstreamHTTP
from seamless.proxy.upstreams import PoolControl, UpstreamPool
from seamless.store import TraceStore


SETTINGS_ENV = "SEAMLESS_PROXY_SETTINGS"
"""How `seamless proxy --workers N` hands its settings (JSON) to the worker processes."""


@dataclass(frozen=True)
class ProxySettings:
    store_url: str
    key_prefix: str
    admin_key: str
    upstreams: tuple[str, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    upstream_timeout_s: float = 600.0
    health_interval_s: float = 2.0
    failover_wait_s: float = 30.0
    """How long a call waits for some server to become healthy before answering 503."""
    workers: int = 1
    """Processes serving the port; admin changes reach all of them (control.py)."""
    token_in_token_out: bool = False
    """Send continuing chat calls with a prompt spliced from recorded token ids (see tito.py)."""
    store_timeout_s: float = 10.0
    """Longest a call's record may take; past it the call is dropped (voided) and the agent gets
    a 503 it can retry, instead of an answer the trace may or may not hold (a stalled Redis)."""
    max_n: int = 64
    """Most choices one call may ask for (`n`): each is generated, recorded and sent back."""


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
