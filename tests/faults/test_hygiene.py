"""Connections and inputs an attacker or a careless client sends: refused cleanly, with the
connection left usable, nothing logged as our bug, and nothing exposed without the admin key."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm


def test_refused_calls_leave_a_keep_alive_connection_usable_and_log_no_traceback(proxy):
    admin = Admin(proxy)
    session = admin.session()
    other = admin.session()
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 200_000}], "max_tokens": 1}
    refusals = [  # (path, key): no key, a wrong key, another session's key, an agent key on admin routes
        (f"/sessions/{session['session_id']}/v1/chat/completions", None),
        (f"/sessions/{session['session_id']}/v1/chat/completions", "wrong"),
        (f"/sessions/{session['session_id']}/v1/chat/completions", other["api_key"]),
        ("/admin/pause", session["api_key"]),
        ("/no/such/route", None),
    ]
    statuses = []
    with httpx.Client(base_url=proxy.url, timeout=30) as client:  # one keep-alive connection
        for round_ in range(8):
            for path, key in refusals:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                statuses.append(client.post(path, json=body, headers=headers).status_code)
            models = client.get("/v1/models", headers={"Authorization": f"Bearer {session['api_key']}"})
            assert models.status_code == 200
    assert set(statuses) == {401, 403, 404}
    log = (proxy.work_dir / "proxy.log").read_text()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def test_deep_json_is_a_400_and_a_crlf_upstream_url_is_refused(proxy):
    admin = Admin(proxy)
    session = admin.session()
    deep = b"[" * 100_000 + b"]" * 100_000
    reply = httpx.post(session["base_url"] + "/chat/completions", content=deep, timeout=30,
                       headers={"Authorization": f"Bearer {session['api_key']}", "Content-Type": "application/json"})
    assert reply.status_code == 400 and "too deeply" in reply.json()["error"]["message"]
    assert admin.post("/sessions", None).status_code == 201
    reply = httpx.post(proxy.url + "/sessions", content=deep, timeout=30, headers=admin.headers)
    assert reply.status_code == 400
    for url in ("http://127.0.0.1:1\r\nX-Injected: 1", "http://127.0.0.1:1/ a", "http://127.0.0.1:1\n"):
        reply = admin.post("/admin/upstreams", {"url": url})
        assert reply.status_code == 400, (url, reply.text)


def test_base_url_comes_from_the_socket_not_the_host_header(proxy):
    reply = httpx.post(proxy.url + "/sessions", json={}, timeout=30,
                       headers={"Authorization": f"Bearer {proxy.admin_key}", "Host": "evil.example:80"})
    assert reply.json()["base_url"].startswith(f"{proxy.url}/sessions/")


def test_unauthenticated_routes_expose_only_a_status(proxy):
    assert httpx.get(proxy.url + "/health").json() == {"status": "ok"}
    assert httpx.get(proxy.url + "/metrics").status_code == 401
    assert httpx.get(proxy.url + "/openapi.json").status_code == 401
    admin = Admin(proxy)
    assert "seamless_proxy_requests_total" in admin.get("/metrics").text
    assert "/admin/pause" in admin.get("/openapi.json").json()["paths"]
    assert admin.get("/health").json()["healthy_upstreams"] == 1


def test_slow_headers_and_slow_bodies_are_cut_off(proxy):
    session = Admin(proxy).session()
    slow_headers = socket.create_connection(("127.0.0.1", proxy.port))
    slow_headers.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    slow_body = socket.create_connection(("127.0.0.1", proxy.port))
    slow_body.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {session['api_key']}"
                      "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    started = time.monotonic()
    for sock in (slow_headers, slow_body):
        sock.settimeout(60)
        reply = b""
        while chunk := sock.recv(4096):  # the proxy closes the connection: recv returns b""
            reply += chunk
        sock.close()
    assert time.monotonic() - started < 40
    assert b"408" in reply or reply == b""  # the body reader says why; a header timeout just closes
