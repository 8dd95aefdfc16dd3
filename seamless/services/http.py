"""One HTTP client per process for the run's control calls to its services (health checks, pause
and resume, weight loads, metrics), and one TLS context for every client the process builds.

`httpx.get(...)` and `httpx.post(...)` build a client for each call, and with it a TLS context
that loads the system's certificates: 30 to 100 ms of CPU a call on this 2-core machine. The
fleet's health check alone spent 4% of a core on it, and the eight or so calls of a colocated
role switch most of its 0.27 s (py-spy on the tiny recipes). A pooled client also keeps its
connections to the servers open between calls.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading

import httpx

_lock = threading.Lock()
_client: httpx.Client | None = None
_client_pid: int | None = None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS context (the system's certificates, loaded once)."""
    return ssl.create_default_context()


def control_client() -> httpx.Client:
    """The process's client for control calls (thread-safe; pass `timeout=` and `headers=` per
    request). A forked child builds its own: a pool's sockets must not be shared across processes."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = httpx.Client(verify=tls_context(), timeout=30.0)
            _client_pid = os.getpid()
        return _client
