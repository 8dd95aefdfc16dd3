"""proxy.coalesce_window_ms: identical first calls of a group's sessions (made together, started
together) go to vLLM as one request with n choices, and each session records, and its agent gets, a
choice of its own, token-exact. Calls of other sessions never wait."""

import asyncio
import re

import httpx
import openai
import pytest

from seamless.config import ProxyConfig
from seamless.proxy.coalesce import mergeable
from seamless.proxy.server import ProxyProcess
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm]

# a window long enough that calls sent together on a loaded machine still meet in it
WINDOW_MS = 1500.0
MESSAGES = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"}]


def test_only_first_turn_chat_calls_without_a_seed_are_merged():
    first = {"messages": MESSAGES, "max_tokens": 8}
    assert mergeable("chat", first)
    assert mergeable("chat", {**first, "stream": True})  # with streamed ones alike (the key holds `stream`)
    assert not mergeable("completion", {"prompt": "2 + 3 =", "max_tokens": 8})
    assert not mergeable("chat", {**first, "n": 2})
    assert not mergeable("chat", {**first, "seed": 1})
    later = {**first, "messages": [*MESSAGES, {"role": "assistant", "content": "5"}, {"role": "user", "content": "+1?"}]}
    assert not mergeable("chat", later)


@pytest.fixture(scope="module")
def merging_proxy(redis_server, vllm_server, tmp_path_factory):
    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("merging-proxy"), upstreams=[vllm_server.url],
                      prefix="merging", config=ProxyConfig(coalesce_window_ms=WINDOW_MS, health_interval_s=0.5)) as p:
        yield p


def _coalesced(proxy) -> tuple[int, int]:
    text = httpx.get(proxy.url + "/metrics", headers=Admin(proxy).headers, timeout=30).text
    calls = int(re.search(r'seamless_proxy_coalesced_total\{kind="calls"\} (\d+)', text).group(1))
    requests = int(re.search(r'seamless_proxy_coalesced_total\{kind="requests"\} (\d+)', text).group(1))
    return calls, requests


def _group(admin: Admin, count: int, together: bool = True) -> list[dict]:
    made = admin.post("/sessions/batch", {"count": count, "group_id": "g", "start_together": together})
    assert made.status_code == 201, made.text
    return made.json()["sessions"]


async def _call(session: dict, body: dict, timeout: float = 120.0):
    async with openai.AsyncOpenAI(base_url=session["base_url"], api_key=session["api_key"], timeout=timeout,
                                  max_retries=0) as client:
        return await client.chat.completions.create(model="tiny", **body)


def test_a_groups_identical_calls_share_one_request_and_each_records_its_own_choice(merging_proxy):
    admin = Admin(merging_proxy)
    sessions = _group(admin, 4)
    before = _coalesced(merging_proxy)
    body = {"messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "logprobs": True,
            "extra_body": {"return_token_ids": True}}

    async def group():
        return await asyncio.gather(*[_call(s, body) for s in sessions])

    answers = asyncio.run(group())
    calls, requests = (a - b for a, b in zip(_coalesced(merging_proxy), before))
    assert (calls, requests) == (4, 1)
    completions = []
    for session, answer in zip(sessions, answers):
        [choice] = answer.choices
        assert choice.index == 0
        [turn] = admin.trajectory(session["session_id"])["turns"]
        # the agent got exactly the tokens and logprobs its session recorded
        assert turn["completion_token_ids"] == choice.token_ids
        assert turn["logprobs"] == pytest.approx([e.logprob for e in choice.logprobs.content], abs=1e-6)
        assert answer.usage.completion_tokens == len(choice.token_ids)
        assert answer.usage.prompt_tokens == len(turn["prompt_token_ids"])
        completions.append(tuple(turn["completion_token_ids"]))
    assert len({a.id for a in answers}) == 4, "each agent's call has an id of its own"
    assert len(set(completions)) > 1, "the choices are independent samples, not one answer copied"
    # all asked the same prompt, rendered once
    prompts = {tuple(admin.trajectory(s["session_id"])["turns"][0]["prompt_token_ids"]) for s in sessions}
    assert len(prompts) == 1


def test_streamed_first_calls_merge_and_each_agent_streams_its_own_recorded_choice(merging_proxy):
    admin = Admin(merging_proxy)
    sessions = _group(admin, 3)
    before = _coalesced(merging_proxy)
    body = {"messages": MESSAGES, "max_tokens": 10, "temperature": 1.0, "logprobs": True, "stream": True,
            "stream_options": {"include_usage": True}, "extra_body": {"return_token_ids": True}}

    async def one(session: dict) -> tuple[str, list[int], list[float], list]:
        text, ids, logprobs, chunks = "", [], [], []
        async with openai.AsyncOpenAI(base_url=session["base_url"], api_key=session["api_key"], timeout=120,
                                      max_retries=0) as client:
            async for chunk in await client.chat.completions.create(model="tiny", **body):
                chunks.append(chunk)
                for choice in chunk.choices:
                    assert choice.index == 0
                    text += choice.delta.content or ""
                    ids += getattr(choice, "token_ids", None) or []
                    logprobs += [e.logprob for e in (choice.logprobs.content if choice.logprobs else None) or []]
        return text, ids, logprobs, chunks

    async def group():
        return await asyncio.gather(*[one(s) for s in sessions])

    streamed = asyncio.run(group())
    assert tuple(a - b for a, b in zip(_coalesced(merging_proxy), before)) == (3, 1)
    completions = set()
    for session, (text, ids, logprobs, chunks) in zip(sessions, streamed):
        [turn] = admin.trajectory(session["session_id"])["turns"]
        assert turn["completion_token_ids"] == ids and text
        assert turn["logprobs"] == pytest.approx(logprobs, abs=1e-6)
        assert chunks[-1].usage.completion_tokens == len(ids)  # asked for: the last chunk
        assert chunks[-2].choices[0].finish_reason in ("stop", "length")
        completions.add(tuple(ids))
    assert len({c.id for _, _, _, chunks in streamed for c in chunks[:1]}) == 3, "an id of its own each"
    assert len(completions) > 1, "independent samples"


def test_streamed_responses_calls_merge_too(merging_proxy):
    admin = Admin(merging_proxy)
    sessions = _group(admin, 2)
    before = _coalesced(merging_proxy)

    async def one(session: dict) -> str:
        async with openai.AsyncOpenAI(base_url=session["base_url"], api_key=session["api_key"], timeout=120,
                                      max_retries=0) as client:
            text = ""
            async for event in await client.responses.create(model="tiny", input="What is 2 + 3?", max_output_tokens=8,
                                                             stream=True):
                if event.type == "response.output_text.delta":
                    text += event.delta
                if event.type == "response.completed":
                    assert event.response.output_text == text
            return text

    async def group():
        return await asyncio.gather(*[one(s) for s in sessions])

    texts = asyncio.run(group())
    assert tuple(a - b for a, b in zip(_coalesced(merging_proxy), before)) == (2, 1)
    for session, text in zip(sessions, texts):
        assert len(admin.trajectory(session["session_id"])["turns"]) == 1 and text


def test_calls_that_differ_go_alone(merging_proxy):
    admin = Admin(merging_proxy)
    sessions = _group(admin, 3)
    before = _coalesced(merging_proxy)
    bodies = [{"messages": MESSAGES, "max_tokens": 4},
              {"messages": [MESSAGES[0], {"role": "user", "content": "What is 4 + 4?"}], "max_tokens": 4},
              {"messages": MESSAGES, "max_tokens": 4, "seed": 7}]

    async def run():
        return await asyncio.gather(*[_call(s, b) for s, b in zip(sessions, bodies)])

    asyncio.run(run())
    assert _coalesced(merging_proxy) == before
    for session in sessions:
        assert len(admin.trajectory(session["session_id"])["turns"]) == 1


def test_an_agent_that_leaves_records_nothing_and_the_others_are_answered(merging_proxy):
    admin = Admin(merging_proxy)
    # the group's fourth never calls, so the batch waits out its window: the leaver leaves it first
    *stay, leave, _ = _group(admin, 4)
    before = _coalesced(merging_proxy)
    body = {"messages": MESSAGES, "max_tokens": 6, "temperature": 1.0}

    async def run():
        staying = [asyncio.create_task(_call(s, body)) for s in stay]
        # gives up long before the window closes, so it leaves a batch that has not gone upstream
        with pytest.raises(openai.APITimeoutError):
            await _call(leave, body, timeout=0.2)
        return await asyncio.gather(*staying)

    answers = asyncio.run(run())
    assert all(len(a.choices) == 1 for a in answers)
    assert tuple(a - b for a, b in zip(_coalesced(merging_proxy), before)) == (2, 1)
    for session in stay:
        assert len(admin.trajectory(session["session_id"])["turns"]) == 1
    assert admin.trajectory(leave["session_id"])["turns"] == []


@pytest.fixture(scope="module")
def patient_proxy(redis_server, vllm_server, tmp_path_factory):
    """A window far longer than any call here: only a full group can make a batch go early."""
    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("patient-proxy"), upstreams=[vllm_server.url],
                      prefix="patient", config=ProxyConfig(coalesce_window_ms=10_000, health_interval_s=0.5)) as p:
        yield p


def test_a_group_made_together_goes_as_soon_as_all_its_calls_arrived(patient_proxy):
    admin = Admin(patient_proxy)
    sessions = _group(admin, 3)
    before = _coalesced(patient_proxy)
    body = {"messages": MESSAGES, "max_tokens": 4, "temperature": 1.0}

    async def group():
        return await asyncio.wait_for(asyncio.gather(*[_call(s, body) for s in sessions]), timeout=8.0)

    answers = asyncio.run(group())  # under the 10 s window: the full group went at once
    assert all(len(a.choices) == 1 for a in answers)
    assert tuple(a - b for a, b in zip(_coalesced(patient_proxy), before)) == (3, 1)


def test_calls_of_sessions_not_started_together_never_wait(patient_proxy):
    admin = Admin(patient_proxy)
    sessions = [*_group(admin, 2, together=False), admin.session(), admin.session()]
    before = _coalesced(patient_proxy)
    body = {"messages": MESSAGES, "max_tokens": 4, "temperature": 1.0}

    async def run():
        return await asyncio.wait_for(asyncio.gather(*[_call(s, body) for s in sessions]), timeout=8.0)

    asyncio.run(run())  # under the 10 s window: none of them waited for it
    assert _coalesced(patient_proxy) == before


def test_start_together_must_be_a_boolean(patient_proxy):
    made = Admin(patient_proxy).post("/sessions/batch", {"count": 2, "start_together": "yes"})
    assert made.status_code == 400 and "start_together" in made.json()["error"]["message"]


def _generated_tokens(vllm_url: str) -> float:
    text = httpx.get(vllm_url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_a_merged_call_rides_out_a_weight_update(merging_proxy, vllm_server, mode):
    """Paused mid-generation (kept, or aborted and continued choice by choice: partial rollout),
    each member still records exactly the tokens its agent got, the early ones at version 0 and
    the late ones at the new version."""
    admin = Admin(merging_proxy)
    sessions = _group(admin, 3)
    body = {"messages": MESSAGES, "max_tokens": 900, "temperature": 1.0, "logprobs": True,
            "extra_body": {"return_token_ids": True, "ignore_eos": True}}
    before = _generated_tokens(vllm_server.url)

    async def run():
        calls = asyncio.gather(*[_call(s, body, timeout=300) for s in sessions])
        try:
            # paused once the merged call has generated some tokens, long before its 900 each
            while await asyncio.to_thread(_generated_tokens, vllm_server.url) < before + 30:
                await asyncio.sleep(0.02)
            assert (await asyncio.to_thread(admin.post, "/admin/pause", {"mode": mode})).json()["paused"] is True
        finally:
            await asyncio.to_thread(admin.post, "/admin/resume", {"weight_version": 3})
        return await calls

    try:
        answers = asyncio.run(run())
        for session, answer in zip(sessions, answers):
            [choice] = answer.choices
            [turn] = admin.trajectory(session["session_id"])["turns"]
            versions = turn["weight_versions"]
            assert turn["completion_token_ids"] == choice.token_ids and len(versions) == 900
            assert versions[0] == 0 and versions[-1] == 3 and versions == sorted(versions), versions
            assert len(turn["logprobs"]) == 900
    finally:  # version 0 again for the tests after this one, pass or fail
        admin.post("/admin/pause", {"mode": "keep"})
        admin.post("/admin/resume", {"weight_version": 0})
