"""X-Session-ID episodes, OpenAI-shaped errors, /v1/models and completions options through the proxy."""

import httpx
import openai
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm


def test_one_client_many_episodes_each_in_its_own_session(tool_proxy):
    admin = Admin(tool_proxy)
    parent, other = admin.session(group_id="g"), admin.session()
    client = openai.OpenAI(base_url=parent["base_url"], api_key=parent["api_key"], max_retries=0)
    for episode in ("e1", "e2", "e1"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": episode}], max_tokens=3,
                                       extra_headers={"X-Session-ID": episode})
    listed = admin.get(f"/sessions/{parent['session_id']}/episodes").json()["episodes"]
    assert listed == [f"{parent['session_id']}.e1", f"{parent['session_id']}.e2"]
    assert [len(admin.trajectory(sid)["turns"]) for sid in listed] == [2, 1]
    assert admin.trajectory(listed[0])["group_id"] == "g" and admin.trajectory(parent["session_id"])["turns"] == []
    # another session's key reaches only its own episodes, never these
    stranger = openai.OpenAI(base_url=other["base_url"], api_key=other["api_key"], max_retries=0)
    stranger.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                     extra_headers={"X-Session-ID": "e1"})
    assert len(admin.trajectory(listed[0])["turns"]) == 2
    assert admin.post(f"/sessions/{listed[0]}/finish").status_code == 200
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       extra_headers={"X-Session-ID": "e1"})


def test_errors_models_and_completion_options(tool_proxy):
    admin = Admin(tool_proxy)
    session = admin.session()
    headers = {"Authorization": f"Bearer {session['api_key']}"}
    missing = httpx.get(f"{tool_proxy.url}/v1/nothing", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    model = httpx.get(f"{session['base_url']}/models", headers=headers).json()["data"][0]
    assert model["id"] == "tiny" and model["max_model_len"] == 1024
    refused = httpx.post(f"{session['base_url']}/completions", headers=headers, json={
        "model": "m", "prompt": "hi", "max_tokens": 2, "stream_options": {"include_usage": True}})
    assert refused.status_code == 400 and "stream=True" in refused.json()["error"]["message"]
    tokens = httpx.post(f"{session['base_url']}/tokenize", headers=headers, json={"prompt": "hello"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompt", [[5, 6, 7], "hello there"])
def test_completions_echo_answers_as_vllm_and_records_only_the_generated_tokens(tool_proxy, tool_vllm_server,
                                                                                 prompt, stream):
    """echo=true (lm-eval-style scoring): vLLM's first chunk holds the prompt's logprobs but only the
    generated token ids, and, asked for token ids as the proxy always asks, no prompt text."""
    admin = Admin(tool_proxy)
    session = admin.session()
    request = {"prompt": prompt, "max_tokens": 3, "echo": True, "logprobs": 0, "temperature": 0.0, "stream": stream}
    answers = []
    for url, key in ((f"{tool_vllm_server.url}/v1", "none"), (session["base_url"], session["api_key"])):
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        reply = client.completions.create(model="tiny", **request)
        chunks = list(reply) if stream else [reply]
        answers.append(("".join(c.choices[0].text for c in chunks if c.choices),
                        [lp for c in chunks if c.choices for lp in c.choices[0].logprobs.token_logprobs]))
    assert answers[1] == answers[0] and answers[0][0].startswith("#$%" if prompt == [5, 6, 7] else prompt)
    turn = admin.trajectory(session["session_id"])["turns"][0]
    prompt_ids = turn["prompt_token_ids"]
    assert prompt_ids == prompt if isinstance(prompt, list) else len(prompt_ids) > 1
    assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == 3
    assert turn["logprobs"] == answers[0][1][len(prompt_ids):]  # the generated tokens' own, not the prompt's


GENERATING = {"/v1/chat/completions": {"messages": 5}, "/v1/completions": {"prompt": []},
              "/v1/responses": {"input": "hi", "tools": [{"type": "web_search"}]},
              "/inference/v1/generate": {"token_ids": "not ids"}}


def _is_openai_error(reply: httpx.Response, status: int, kind: str | None = None) -> bool:
    error = reply.json().get("error")
    return (reply.status_code == status and isinstance(error, dict) and isinstance(error.get("message"), str)
            and "type" in error and (kind is None or error["type"] == kind))


def test_every_route_answers_errors_in_its_apis_shape(tool_proxy):
    """A wrong key and a malformed body, on each agent route: OpenAI's error shape (Anthropic's on
    /v1/messages, which its SDK parses), never a bare framework error."""
    session = Admin(tool_proxy).session()
    root = session["base_url"].removesuffix("/v1")
    good, bad = {"Authorization": f"Bearer {session['api_key']}"}, {"Authorization": "Bearer nope"}
    for path, malformed in GENERATING.items():
        assert _is_openai_error(httpx.post(root + path, json={}, headers=bad), 401, "authentication_error"), path
        assert _is_openai_error(httpx.post(root + path, json=malformed, headers=good), 400), path
    for path in ("/tokenize", "/detokenize"):
        assert _is_openai_error(httpx.post(root + path, json={"prompt": "hi"}, headers=bad), 401), path
    for headers, body, status in ((bad, {"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}, 401),
                                  (good, {"messages": [{"role": "user", "content": "hi"}]}, 400)):
        reply = httpx.post(root + "/v1/messages", json={"model": "m", **body}, headers=headers)
        assert reply.status_code == status and reply.json()["type"] == "error", reply.text
        assert reply.json()["error"]["type"] in ("authentication_error", "invalid_request_error")


def test_tokenize_and_detokenize_go_to_the_sessions_server_and_round_trip(tool_proxy, tool_vllm_server):
    session = Admin(tool_proxy).session()
    headers = {"Authorization": f"Bearer {session['api_key']}"}
    for url, sent in ((session["base_url"], headers), (f"{tool_vllm_server.url}", {})):
        tokens = httpx.post(f"{url.removesuffix('/v1')}/tokenize", json={"model": "tiny", "prompt": "hello there"},
                            headers=sent).json()["tokens"]
        text = httpx.post(f"{url.removesuffix('/v1')}/detokenize", json={"model": "tiny", "tokens": tokens},
                          headers=sent).json()["prompt"]
        assert text == "hello there", url
