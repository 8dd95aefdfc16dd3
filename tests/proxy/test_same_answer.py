"""Same answer as vLLM: a seeded request gets, through the proxy, what vLLM itself answers,
streamed or not, for every tool_choice and when the output is cut off by max_tokens."""

import json

import httpx
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]
NAMED = {"type": "function", "function": {"name": "add"}}
VARIANTS = {  # name -> (tool_choice, max_tokens)
    "none": ("none", 24), "auto": ("auto", 24), "required": ("required", 200), "named": (NAMED, 200),
    "required-cut-off": ("required", 12), "named-cut-off": (NAMED, 9), "no-tools-cut-off": (None, 5)}
SEEDS = range(3)


def _request(tool_choice, max_tokens: int, seed: int, stream: bool) -> dict:
    body = {"messages": [{"role": "user", "content": "Add 2 and 3 with the tool."}], "max_tokens": max_tokens,
            "temperature": 1.0, "seed": seed, "stream": stream}
    if tool_choice is not None:
        body |= {"tools": TOOLS, "tool_choice": tool_choice}
    return body


def _message(message: dict) -> tuple:
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
    return message.get("content"), message.get("reasoning"), calls


def _chunks(response: httpx.Response) -> tuple:
    """The stream folded per field (vLLM's own chunking of deltas varies with timing), and how
    many chunks showed nothing (no delta, no finish reason)."""
    role, content, reasoning, calls, finish, empty = None, "", "", {}, None, 0
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:])["choices"]:
            delta = choice["delta"]
            empty += not any(v not in (None, [], {}) for v in delta.values()) and choice.get("finish_reason") is None
            role = delta.get("role") or role
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or []:
                name, args = calls.get(call["index"], ("", ""))
                function = call.get("function") or {}
                calls[call["index"]] = (name + (function.get("name") or ""), args + (function.get("arguments") or ""))
            finish = choice.get("finish_reason") or finish
    return (role, content, reasoning, calls, finish), empty


def _answer(client: httpx.Client, url: str, headers: dict, body: dict):
    if body["stream"]:
        with client.stream("POST", url, json=body, headers=headers) as response:
            assert response.status_code == 200, response.read()
            return _chunks(response)
    response = client.post(url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return _message(choice["message"]), choice["finish_reason"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_proxied_answers_equal_vllms_own(tool_proxy, tool_vllm_server, stream):
    admin = Admin(tool_proxy)
    session = admin.session()
    headers = {"Authorization": f"Bearer {session['api_key']}"}
    differ, tool_calls_seen, cut_off_seen = [], 0, 0
    with httpx.Client(timeout=120) as client:
        for name, (tool_choice, max_tokens) in VARIANTS.items():
            for seed in SEEDS:
                body = _request(tool_choice, max_tokens, seed, stream)
                direct = _answer(client, f"{tool_vllm_server.url}/v1/chat/completions", {}, body | {"model": "tiny"})
                proxied = _answer(client, f"{session['base_url']}/chat/completions", headers, body | {"model": "p"})
                if stream:
                    assert proxied[1] == 0, "the proxy sent chunks that show nothing"
                    direct, proxied = direct[0], proxied[0]
                if direct != proxied:
                    differ.append((name, seed, direct, proxied))
                if not stream:
                    tool_calls_seen += bool(direct[0][2])
                    cut_off_seen += direct[1] == "length"
    assert not differ, "\n".join(map(repr, differ[:3]))
    if not stream:
        assert tool_calls_seen >= 2 and cut_off_seen >= 9  # the variants did what they are named for
    turns = admin.trajectory(session["session_id"])["turns"]
    assert len(turns) == len(VARIANTS) * len(SEEDS)
    assert all(len(t["logprobs"]) == len(t["completion_token_ids"]) > 0 for t in turns)
