"""Anthropic's /v1/messages (with its own SDK) and vLLM's token-in /inference/v1/generate through
the proxy: the answer vLLM itself gives, recorded token-exactly with weight versions; and, with
the Responses route, each holds through a pause/resume and fails over to another server."""

import threading

import httpx
import openai
import pytest

from seamless.config import ProxyConfig
from seamless.proxy.server import ProxyProcess
from tests.faults.helpers import TcpRelay, wait_for
from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

PING = {"name": "ping", "description": "Check that the server is up.", "strict": True,
        "input_schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}


def _root(session: dict) -> str:
    """The session's URL without /v1: where Anthropic's SDK and /inference/v1/generate start."""
    return session["base_url"].removesuffix("/v1")


def _assert_recorded(admin: Admin, session: dict, calls: int) -> list[dict]:
    turns = admin.trajectory(session["session_id"])["turns"]
    assert len(turns) == calls
    for turn in turns:
        assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == len(turn["weight_versions"]) > 0
    return turns


def test_anthropic_sdk_tool_use_round_trip_answers_as_vllm(tool_proxy, tool_vllm_server):
    anthropic = pytest.importorskip("anthropic")
    admin = Admin(tool_proxy)
    session = admin.session()
    # temperature as extra_body: this SDK's create() no longer takes it, vLLM's route still does
    request = {"model": "tiny", "max_tokens": 40, "extra_body": {"temperature": 0.0}, "system": "Use the tool.", "tools": [PING],
               "messages": [{"role": "user", "content": "Is the server up?"}]}
    named = {**request, "tool_choice": {"type": "tool", "name": "ping"}}
    direct = anthropic.Anthropic(base_url=tool_vllm_server.url, api_key="none", max_retries=0)
    proxied = anthropic.Anthropic(base_url=_root(session), api_key=session["api_key"], max_retries=0)
    theirs, ours = direct.messages.create(**named), proxied.messages.create(**named)
    assert [(b.type, b.name, b.input) for b in ours.content] == [(b.type, b.name, b.input) for b in theirs.content]
    assert ours.content[0].type == "tool_use" and ours.stop_reason == theirs.stop_reason == "tool_use"
    assert (ours.usage.input_tokens, ours.usage.output_tokens) == (theirs.usage.input_tokens, theirs.usage.output_tokens)
    # the tool's result goes back; the streamed answer is the plain one's
    history = [*request["messages"], {"role": "assistant", "content": [b.model_dump() for b in ours.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": ours.content[0].id, "content": "pong"}]}]
    plain = proxied.messages.create(**{**request, "messages": history})
    with proxied.messages.stream(**{**request, "messages": history}) as stream:
        streamed = stream.get_final_message()
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in plain.content]
    assert streamed.stop_reason == plain.stop_reason == direct.messages.create(**{**request, "messages": history}).stop_reason
    turns = _assert_recorded(admin, session, calls=3)
    assert turns[1]["prompt_token_ids"][:len(turns[0]["prompt_token_ids"])] == turns[0]["prompt_token_ids"]
    assert turns[2]["completion_token_ids"] == turns[1]["completion_token_ids"]
    with pytest.raises(anthropic.BadRequestError):  # Anthropic-shaped errors: its SDK parses them
        proxied.messages.create(model="tiny", max_tokens=5, messages=[])


@pytest.mark.parametrize("output_mode", ["tokens", "text"])
def test_generate_samples_the_tokens_vllm_samples_and_records_them(tool_proxy, tool_vllm_server, output_mode):
    admin = Admin(tool_proxy)
    session = admin.session()
    headers = {"Authorization": f"Bearer {session['api_key']}"}
    params = {"max_tokens": 8, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    if output_mode == "tokens":
        params["logprobs"] = 1
    body = {"token_ids": [5, 6, 7], "sampling_params": params, "output_mode": output_mode, "return_token_ids": True}
    theirs = httpx.post(f"{tool_vllm_server.url}/inference/v1/generate", json=body, timeout=120).json()
    ours = httpx.post(f"{_root(session)}/inference/v1/generate", json=body, headers=headers, timeout=120).json()
    mine, vllms = ours["choices"][0], theirs["choices"][0]
    assert mine["token_ids"] == vllms["token_ids"] and len(mine["token_ids"]) == 8
    assert mine["finish_reason"] == vllms["finish_reason"] == "length"
    assert ours["prompt_token_ids"] == theirs["prompt_token_ids"] == [5, 6, 7]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [ours["usage"][k] for k in counts] == [theirs["usage"][k] for k in counts]
    assert mine["weight_versions"] == [{"version": "0", "start": 0, "end": 8}]
    if output_mode == "tokens":
        assert [(e["token_id"], e["logprob"]) for e in mine["logprobs"]["content"]] == \
            [(e["token_id"], e["logprob"]) for e in vllms["logprobs"]["content"]]
    else:
        assert mine["text"] == vllms["text"]
    streamed = []
    with httpx.stream("POST", f"{_root(session)}/inference/v1/generate", json={**body, "stream": True},
                      headers=headers, timeout=120) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                streamed += httpx.Response(200, content=line[6:]).json()["choices"]
    assert [t for c in streamed for t in c["token_ids"]] == mine["token_ids"]
    assert streamed[-1]["finish_reason"] == "length"
    (turn, again) = _assert_recorded(admin, session, calls=2)
    assert turn["prompt_token_ids"] == [5, 6, 7] and turn["completion_token_ids"] == again["completion_token_ids"]
    assert turn["completion_token_ids"] == mine["token_ids"]
    if output_mode == "tokens":
        assert turn["logprobs"] == [e["logprob"] for e in mine["logprobs"]["content"]]


@pytest.mark.parametrize("route", ["messages", "generate", "responses", "chat"])
def test_a_whole_answer_once_sent_is_no_longer_in_doubt(tool_proxy, redis_server, route):
    """A call leaves its proxy worker's in-doubt hash once its answer is sent; one left there would be
    voided, though the agent got it, by the next proxy that finds this worker gone (a restart)."""
    import redis

    from seamless.traces.keys import Keys

    admin = Admin(tool_proxy)
    session = admin.session()
    headers = {"Authorization": f"Bearer {session['api_key']}", "x-api-key": session["api_key"]}
    path, body = {
        "messages": ("/v1/messages", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        "generate": ("/inference/v1/generate", {"token_ids": [5, 6, 7], "sampling_params": {"max_tokens": 4}}),
        "responses": ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 4}),
        "chat": ("/v1/chat/completions", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    }[route]
    reply = httpx.post(_root(session) + path, json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    _assert_recorded(admin, session, calls=1)
    keys = Keys("tools")
    with redis.Redis.from_url(redis_server.url) as client:
        def in_doubt() -> list[bytes]:
            return [call for key in client.scan_iter(match=keys.proxy.in_doubt_prefix + "*")
                    for call, where in client.hgetall(key).items() if where.decode() == keys.session(session["session_id"])]
        wait_for(lambda: not in_doubt(), 10, f"the {route} call left the in-doubt hash")


def _long_call(session: dict, route: str, started: threading.Event) -> int:
    """One long streamed call on `route`; sets `started` after a few events; returns the event count."""
    headers = {"Authorization": f"Bearer {session['api_key']}", "x-api-key": session["api_key"]}
    path, body = {
        "messages": ("/v1/messages", {"model": "m", "max_tokens": 400, "temperature": 0.0,
                                      "messages": [{"role": "user", "content": "count"}]}),
        "generate": ("/inference/v1/generate", {"token_ids": [5, 6, 7], "sampling_params": {
            "max_tokens": 400, "temperature": 0.0, "ignore_eos": True}}),
        "responses": ("/v1/responses", {"model": "m", "input": "count", "max_output_tokens": 400,
                                        "temperature": 0.0, "ignore_eos": True}),
    }[route]
    events = 0
    with httpx.stream("POST", _root(session) + path, json={**body, "stream": True}, headers=headers,
                      timeout=300) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            events += line.startswith("data:")
            if events == 6:
                started.set()
    return events


@pytest.mark.parametrize("mode", ["keep", "abort"])
@pytest.mark.parametrize("route", ["messages", "generate", "responses"])
def test_adapted_routes_ride_out_a_pause_and_resume(tool_proxy, route, mode):
    """A pause mid-call: kept requests resume, aborted ones are continued (partial rollout); either
    way the turn has the tokens before the pause at version 0 and after it at the new version. One
    call at a time, paused as soon as it has streamed a few events, so that it is mid-call whatever
    the machine's load (three calls at once on a loaded machine let the first finish before the
    last had started)."""
    admin = Admin(tool_proxy)
    session = admin.session()
    started = threading.Event()
    results: dict = {}
    thread = threading.Thread(target=lambda: results.__setitem__(route, _long_call(session, route, started)))
    thread.start()
    try:
        try:
            assert started.wait(120)
            assert admin.post("/admin/pause", {"mode": mode}).json()["paused"] is True
        finally:
            admin.post("/admin/resume", {"weight_version": 3})
        thread.join(300)
        assert route in results
        (turn,) = admin.trajectory(session["session_id"])["turns"]
        versions = turn["weight_versions"]
        assert versions[0] == 0 and versions[-1] == 3 and versions == sorted(versions), (route, versions)
        assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == len(versions)
    finally:  # the session's proxy stamps version 0 again for the tests after this one, pass or fail
        admin.post("/admin/pause", {"mode": "keep"})
        admin.post("/admin/resume", {"weight_version": 0})


def test_adapted_routes_fail_over_to_another_server(tmp_path, redis_server, tool_vllm_server):
    """Two upstreams (relays to one vLLM); one goes away before the pool notices: every route's
    call moves to the other and is recorded there."""
    relays = [TcpRelay(tool_vllm_server.url).start() for _ in range(2)]
    try:
        with ProxyProcess(redis_server.url, tmp_path / "proxy", upstreams=[r.url for r in relays],
                          prefix="adapted-failover", config=ProxyConfig(health_interval_s=60)) as proxy:
            admin = Admin(proxy)
            sessions = [admin.session() for _ in range(4)]
            relays[0].stop()
            for session in sessions:
                root = _root(session)
                headers = {"Authorization": f"Bearer {session['api_key']}"}
                for path, body in (
                        ("/v1/messages", {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}),
                        ("/inference/v1/generate", {"token_ids": [5, 6], "sampling_params": {"max_tokens": 3}}),
                        ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 3})):
                    reply = httpx.post(root + path, json=body, headers=headers, timeout=120)
                    assert reply.status_code == 200, (path, reply.text)
                turns = admin.trajectory(session["session_id"])["turns"]
                assert len(turns) == 3 and {t["upstream"] for t in turns} == {relays[1].url}
    finally:
        for relay in relays:
            relay.close()
