"""Which address a service listens on, and the rule that holds for all of them: nothing listens
beyond loopback without a key.

On one machine every service binds 127.0.0.1 and needs no key for that. Across nodes, a service
binds the address its node is reached at, and then requires a key of its own kind: vLLM its API
key (all routes, not only /v1: see services/vllm_guard.py), the proxy its admin and session keys
(always required), Redis a password (or an ACL user). Keys are never written into a recipe (the
resolved recipe is saved in the run folder): they come from the environment or are generated for
the run.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit, urlunsplit

from seamless.errors import ServiceError

SERVER_KEY_ENV = "SEAMLESS_VLLM_API_KEY"
"""The API key of the run's vLLM servers: they require it, the proxy and the fleet send it."""
LOOPBACK = "127.0.0.1"
NODE = "node"
"""`cluster.bind: node`: each service binds the address Ray reports for the node it runs on."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1 and `localhost`: this machine only, where no key is needed. Other
    127.x.y.z addresses count as beyond loopback on purpose: a test of several Ray nodes on one
    machine gives each node one of them, standing for the node's network address, so a service
    bound there takes the same path (and needs the same keys) as on a real node."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name: it may resolve to anything
        return False
    return address in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def require_key(service: str, host: str, key: str | None, how: str) -> None:
    """Refuse to start `service` on a non-loopback `host` without a key; `how` says how to give one."""
    if not is_loopback(host) and not key:
        raise ServiceError(f"{service} would listen on {host}, beyond loopback, without a key; {how}, "
                           f"or bind {LOOPBACK}")


def server_key() -> str | None:
    """The vLLM servers' API key of this process's run ($SEAMLESS_VLLM_API_KEY), if any."""
    return os.environ.get(SERVER_KEY_ENV) or None


def server_headers(key: str | None = None) -> dict[str, str]:
    """Headers for a call to a rollout server: its API key as a bearer token, when it has one."""
    key = key if key is not None else server_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def url_host(host: str) -> str:
    """`host` as it goes into a URL (IPv6 in brackets); a wildcard bind is reached on loopback."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        return LOOPBACK
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def redacted(url: str) -> str:
    """A URL safe to print or log: its password (redis://:PASSWORD@host) replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def store_url_problem(url: str) -> str | None:
    """Why a Redis URL is unsafe to use, or None: one that reaches beyond loopback without a
    password (or an ACL user with one)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or parts.hostname is None or is_loopback(parts.hostname):
        return None
    if parts.password:
        return None
    return (f"it reaches {parts.hostname} without a password; give the Redis a password (requirepass) or an "
            f"ACL user and write redis://:PASSWORD@{parts.hostname}:{parts.port or 6379}/0 "
            "(or redis://USER:PASSWORD@...)")
