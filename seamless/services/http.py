"""One HTTP client per process for the run's control calls to its services (health checks, pause
and resume, weight loads, metrics), and one TLS context for every client the process builds.

`httpx.get(...)` and `httpx.post(...)` build a client for each call, and with it a TLS context
that loads the system's certificates: 30 to 100 ms of CPU a call on this 2-core machine. The
fleet's health check alone spent 4% of a core on it, and the eight or so calls of a colocated
role switch most of its 0.27 s (py-spy on the tiny recipes). A pooled client also keeps its
connections to the servers open between calls.

Its connections send TCP keepalives (after 10 s idle, every 5 s, 3 unanswered end it): a server
whose machine vanishes (no reset ever comes) then fails a call in about 25 s, instead of holding a
weight reload for its whole read timeout (600 s).
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading

import httpx

KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]
"""Socket options of the control client's connections (Linux names)."""

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
            transport = httpx.HTTPTransport(verify=tls_context(), socket_options=KEEPALIVE)
            _client = httpx.Client(transport=transport, timeout=30.0)
            _client_pid = os.getpid()
        return _client
