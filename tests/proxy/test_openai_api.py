import asyncio

import httpx
import openai
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}]


def test_sync_client_non_streaming_records_exactly_what_vllm_returned(proxy, vllm_server):
    admin = Admin(proxy)
    session = admin.session(group_id="g1", task_id="t1")
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    reply = client.chat.completions.create(model="anything", messages=MESSAGES, max_tokens=12,
                                           temperature=0.0, logprobs=True)
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == "anything"  # the agent's model name is echoed, whatever the server serves
    assert len(reply.choices[0].logprobs.content) > 0

    direct = httpx.post(f"{vllm_server.url}/v1/chat/completions", timeout=60, json={
        "model": vllm_server.model_name, "messages": MESSAGES, "max_tokens": 12, "temperature": 0.0,
        "logprobs": True, "return_token_ids": True}).json()
    turn = admin.trajectory(session["session_id"])["turns"][0]
    assert turn["prompt_token_ids"] == direct["prompt_token_ids"]
    assert turn["completion_token_ids"] == direct["choices"][0]["token_ids"]
    assert turn["logprobs"] == pytest.approx([e["logprob"] for e in direct["choices"][0]["logprobs"]["content"]],
                                             abs=1e-6)
    assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert turn["weight_versions"] == [0] * len(turn["completion_token_ids"])
    assert turn["request"]["messages"] == MESSAGES


def test_streamed_and_non_streamed_recordings_are_identical(proxy):
    admin = Admin(proxy)
    recorded = []
    for stream in (False, True):
        session = admin.session()
        client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
        if stream:
            chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12,
                                                         temperature=0.0, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert not any(getattr(c.choices[0], "token_ids", None) for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12,
                                                  temperature=0.0).choices[0].message.content
        turn = admin.trajectory(session["session_id"])["turns"][0]
        recorded.append((text, turn["prompt_token_ids"], turn["completion_token_ids"], turn["logprobs"]))
    assert recorded[0] == recorded[1]


async def test_async_client_through_bearer_only_v1_route(proxy):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=session["api_key"])
    reply = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, temperature=0.0)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, temperature=0.0,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    await client.close()
    assert len(admin.trajectory(session["session_id"])["turns"]) == 2


def test_completions_with_token_ids_n_and_models(proxy):
    admin = Admin(proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"])
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.completions.create(model="m", prompt=[5, 6, 7], max_tokens=5, n=3, temperature=1.0, seed=1,
                                      logprobs=0, extra_body={"ignore_eos": True})
    assert len(reply.choices) == 3
    assert all(len(c.logprobs.token_logprobs) == 5 for c in reply.choices)
    turns = admin.trajectory(session["session_id"])["turns"]
    assert [t["prompt_token_ids"] for t in turns] == [[5, 6, 7]] * 3
    assert [t["logprobs"] for t in turns] == [pytest.approx(c.logprobs.token_logprobs, abs=1e-6)
                                              for c in reply.choices]


async def test_two_hundred_concurrent_sessions_keep_their_turns_apart(proxy, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    admin = Admin(proxy)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=300)) as http:
        created = await asyncio.gather(*(http.post(f"{proxy.url}/sessions", headers=admin.headers, json={"task_id": str(i)})
                                         for i in range(200)))
        sessions = [r.json() for r in created]

        async def episode(i: int, session: dict) -> None:
            client = openai.AsyncOpenAI(base_url=session["base_url"], api_key=session["api_key"], http_client=http)
            history = [{"role": "user", "content": f"episode {i}"}]
            for _ in range(2):
                reply = await client.chat.completions.create(model="m", messages=history, max_tokens=3)
                history += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                            {"role": "user", "content": f"again {i}"}]

        await asyncio.gather(*(episode(i, s) for i, s in enumerate(sessions)))
        trajectories = await asyncio.gather(*(http.get(f"{proxy.url}/sessions/{s['session_id']}/trajectory",
                                                       headers=admin.headers) for s in sessions))
    for i, response in enumerate(trajectories):
        turns = response.json()["turns"]
        assert len(turns) == 2
        assert response.json()["task_id"] == str(i)
        assert f"episode {i}<" in tokenizer.decode(turns[0]["prompt_token_ids"])
        assert f"again {i}<" in tokenizer.decode(turns[1]["prompt_token_ids"])
