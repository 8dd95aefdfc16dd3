"""A finished session takes no more turns (a call in flight at `finish`, other workers), and what
one call can make the proxy generate and store is bounded."""

from __future__ import annotations

import httpx
import openai
import pytest

from seamless.proxy.server import ProxyProcess
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_call_in_flight_at_finish_is_not_added_to_the_handed_over_episode(proxy, vllm_server):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=120)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=200, stream=True,
                                            extra_body={"ignore_eos": True})
    next(iter(stream))  # the call is generating on the server
    assert admin.post("/admin/pause", {"mode": "keep"}).status_code == 200  # and frozen there
    try:
        assert admin.post(f"/sessions/{session['session_id']}/finish").status_code == 200
    finally:
        assert admin.post("/admin/resume", {}).status_code == 200
    with pytest.raises(openai.APIError, match="has finished"):  # the agent is told, not silently dropped
        for _ in stream:
            pass
    assert admin.trajectory(session["session_id"])["turns"] == []
    with pytest.raises(openai.AuthenticationError):  # and the key stopped working
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)


def test_with_two_workers_a_finished_key_stops_working_on_both(tmp_path, redis_server, vllm_server):
    with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="finish2",
                      extra_args=["--workers", "2"]) as proxy:
        admin = Admin(proxy)
        session = admin.session()
        url = session["base_url"] + "/chat/completions"
        headers = {"Authorization": f"Bearer {session['api_key']}", "Connection": "close"}
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 2}
        workers = set()
        while len(workers) < 2:  # both workers have seen (and cached) the key
            assert httpx.post(url, json=body, headers=headers, timeout=60).status_code == 200
            workers.add(httpx.get(f"{proxy.url}/health", timeout=10, headers={
                "Authorization": f"Bearer {proxy.admin_key}", "Connection": "close"}).json()["worker"])
        recorded = len(admin.trajectory(session["session_id"])["turns"])
        assert admin.post(f"/sessions/{session['session_id']}/finish").status_code == 200
        statuses = [httpx.post(url, json=body, headers=headers, timeout=60).status_code for _ in range(16)]
        assert set(statuses) <= {401, 409}, statuses
        assert len(admin.trajectory(session["session_id"])["turns"]) == recorded


def test_n_is_capped_and_a_call_stores_its_request_and_shared_prompt_once(proxy, redis_client):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, n=65)
    with pytest.raises(openai.BadRequestError, match="at most 64"):  # 2 prompts x 40 choices
        client.completions.create(model="m", prompt=["a", "b"], max_tokens=1, n=40)

    sizes = {}
    for n in (1, 16):
        sid = admin.session()["session_id"]
        content = "word " * 150  # a long prompt: ~ 600 prompt tokens
        reply = httpx.post(f"{proxy.url}/sessions/{sid}/v1/chat/completions", timeout=120,
                           headers={"Authorization": f"Bearer {proxy.admin_key}"},
                           json={"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 4,
                                 "n": n, "ignore_eos": True})
        assert reply.status_code == 200, reply.text
        turns = admin.trajectory(sid)["turns"]
        assert len(turns) == n and all(t["request"]["n"] == n for t in turns)
        sizes[n] = (redis_client.memory_usage(f"test:turns:{sid}"), len(turns[0]["prompt_token_ids"]))
    (one, prompt_tokens), (sixteen, _) = sizes[1], sizes[16]
    # the bound, stated: one call stores its request and each distinct prompt once, plus per
    # choice 12 bytes a completion token (id, logprob, version) and a header of about 370 bytes
    # (session, finish reason, server, and the call's clock: five timestamps)
    per_choice = sixteen - one
    print(f"stored: n=1 {one} B, n=16 {sixteen} B ({per_choice / 15:.0f} B per extra choice of 4 tokens; "
          f"prompt {prompt_tokens} tokens)")
    assert per_choice <= 15 * (12 * 4 + 400)
    assert per_choice / 15 < 4 * prompt_tokens  # a choice costs less than a copy of the prompt (or the request)


def test_the_openai_client_does_not_retry_a_call_refused_because_its_session_finished(proxy, vllm_server):
    import threading

    from tests.faults.helpers import wait_for
    from tests.faults.test_stalls import _errors

    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=3, timeout=120)
    result: dict = {}

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=200, extra_body={"ignore_eos": True})
        except openai.APIStatusError as exc:
            result["error"] = exc

    def inflight() -> int:
        text = httpx.get(f"{proxy.url}/metrics", headers=admin.headers, timeout=10).text
        return sum(int(l.split()[-1]) for l in text.splitlines() if l.startswith("seamless_proxy_upstream_inflight{"))

    before = _errors(proxy, "conflict")
    # the server itself paused: it takes the call and holds it, so the call is in flight for sure
    httpx.post(f"{vllm_server.url}/pause", params={"mode": "keep"}, timeout=30).raise_for_status()
    try:
        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: inflight() >= 1, 30, "the call reached the server")
        assert admin.post(f"/sessions/{session['session_id']}/finish").status_code == 200
    finally:
        httpx.post(f"{vllm_server.url}/resume", timeout=30).raise_for_status()
    caller.join(120)
    # refused once with 409, and not retried (a retry would have met a 401: the key died with the session)
    assert result["error"].status_code == 409, result
    assert result["error"].response.headers["x-should-retry"] == "false"
    assert _errors(proxy, "conflict") == before + 1
