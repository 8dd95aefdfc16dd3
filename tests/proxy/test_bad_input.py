"""Bad input gets an OpenAI-shaped 4xx that says what is wrong; nothing half-written; still serving."""

import json
import socket

import httpx
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm


@pytest.fixture
def session(proxy):
    return Admin(proxy).session()


def _post(session, path, content, headers=None):
    headers = {"Authorization": f"Bearer {session['api_key']}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(session["base_url"] + path, content=content, headers=headers, timeout=60)


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("content, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"messages": "hi"}).encode(), 400, "'messages' must be a non-empty list"),
    (json.dumps({"messages": [{"content": "x"}]}).encode(), 400, "messages[0] must be an object with a string 'role'"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}).encode(), 400,
     "'max_tokens' has the wrong type"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 0}).encode(), 400, "'n' must be at least 1"),
])
def test_malformed_requests(proxy, session, content, status, words):
    assert words in _error(_post(session, "/chat/completions", content), status)["message"]
    assert Admin(proxy).trajectory(session["session_id"])["turns"] == []


def test_oversized_bodies_are_refused(proxy, session):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}).encode()
    assert "limit is" in _error(_post(session, "/chat/completions", big), 413)["message"]


def test_errors_of_the_server_reach_the_agent(proxy, session):
    too_long = json.dumps({"prompt": [5] * 2000, "max_tokens": 4}).encode()
    assert "model" in _error(_post(session, "/completions", too_long), 400)["message"].lower()
    bad_ids = json.dumps({"prompt": [10**9], "max_tokens": 4}).encode()
    _error(_post(session, "/completions", bad_ids), 400)
    assert Admin(proxy).trajectory(session["session_id"])["turns"] == []


def test_keys_reach_only_their_own_session(proxy, session):
    admin = Admin(proxy)
    other = admin.session()
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).encode()
    wrong = httpx.post(f"{proxy.url}/sessions/{other['session_id']}/v1/chat/completions", content=body,
                       headers={"Authorization": f"Bearer {session['api_key']}"}, timeout=60)
    _error(wrong, 403)
    _error(httpx.post(f"{proxy.url}/sessions", headers={"Authorization": f"Bearer {session['api_key']}"}), 401)
    _error(httpx.post(f"{proxy.url}/v1/chat/completions", content=body, timeout=60), 401)
    _error(httpx.post(f"{proxy.url}/v1/chat/completions", content=body, timeout=60,
                      headers={"Authorization": "Bearer not-a-key"}), 401)
    _error(admin.get("/sessions/no-such-session/trajectory"), 404)
    _error(admin.post("/sessions/no-such-session/reward", {"reward": 1.0}), 404)
    _error(admin.post(f"/sessions/{session['session_id']}/reward", {"reward": "high"}), 400)


def test_finished_sessions_refuse_calls_and_publish_once(proxy, session):
    admin = Admin(proxy)
    assert admin.post(f"/sessions/{session['session_id']}/finish").json()["already_finished"] is False
    assert admin.post(f"/sessions/{session['session_id']}/finish").json()["already_finished"] is True
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).encode()
    _error(_post(session, "/chat/completions", body), 401)


def test_a_client_that_disconnects_mid_stream_records_nothing(proxy, session):
    body = json.dumps({"prompt": "go", "max_tokens": 400, "stream": True, "ignore_eos": True}).encode()
    port = int(proxy.url.rsplit(":", 1)[1])
    path = session["base_url"].split(str(port), 1)[1] + "/completions"
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {session['api_key']}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert b"200 OK" in raw.recv(4096)  # the stream started; now hang up
    health = httpx.get(f"{proxy.url}/health", timeout=30,
                       headers={"Authorization": f"Bearer {proxy.admin_key}"}).json()
    assert health["healthy_upstreams"] == 1
    reply = httpx.post(session["base_url"] + "/completions", timeout=60,
                       headers={"Authorization": f"Bearer {session['api_key']}"},
                       json={"prompt": "after", "max_tokens": 2})
    assert reply.status_code == 200
    turns = Admin(proxy).trajectory(session["session_id"])["turns"]
    assert [len(t["completion_token_ids"]) for t in turns] == [2]


def test_a_generated_key_that_starts_with_a_dash_still_reaches_the_proxy(tmp_path, monkeypatch):
    # secrets.token_urlsafe starts with "-" once in 64 keys; argparse took "--admin-key -x..." for
    # a missing value and the proxy exited (seen as a resumed run dying in CI). The key now travels
    # in the environment (other users can read a command line), values starting with "-" in argv
    import argparse

    from seamless.config import ProxyConfig
    from seamless.proxy.server import ProxyProcess, add_arguments, config_of

    process = ProxyProcess("redis://127.0.0.1:1", tmp_path, upstreams=["http://127.0.0.1:2"],
                           prefix="-run", config=ProxyConfig(admin_key="-Xk3y"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(process._process.argv[3:])
    assert (args.prefix, args.upstream) == ("-run", ["http://127.0.0.1:2"])
    assert "-Xk3y" not in " ".join(process._process.argv)
    monkeypatch.setenv("SEAMLESS_ADMIN_KEY", process._env["SEAMLESS_ADMIN_KEY"])
    assert config_of(args).admin_key == "-Xk3y"
