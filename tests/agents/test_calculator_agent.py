import json

from agents import calculator_agent
from seamless.agent.api import AgentContext, Sampling
from seamless.agent.tasks import Task
from tests.agents.fake_openai import FakeOpenAI, chat_reply, error_reply

TASK = Task("sub-19-4", "What is 19 - 4?", "15", {"a": "19", "op": "-", "b": "4"})
NO_PARSER = ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')


def _ctx(fake: FakeOpenAI, max_turns: int = 4) -> AgentContext:
    return AgentContext(base_url=fake.base_url, api_key="k", session_id="s", group_id="g",
                        sampling=Sampling(temperature=0.7, max_tokens=21, top_p=0.9), model="policy",
                        max_turns=max_turns, timeout_s=10)


def _call(expression: str) -> dict:
    return {"name": "calculator", "arguments": json.dumps({"expression": expression})}


async def test_structured_tool_call_then_answer():
    with FakeOpenAI([chat_reply(tool_calls=[_call("19 - 4")]), chat_reply("15")]) as fake:
        answer = await calculator_agent.run(TASK, _ctx(fake))
    assert answer == "15"
    first, second = fake.requests
    assert first["tools"] == [calculator_agent.CALCULATOR_TOOL] and first["tool_choice"] == "auto"
    assert (first["temperature"], first["max_tokens"], first["top_p"], first["model"]) == (0.7, 21, 0.9, "policy")
    assert first["messages"] == calculator_agent.build_messages(TASK)
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == _call("19 - 4")
    assert tool == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "15"}


async def test_server_without_tool_parser_falls_back_to_hermes_text():
    call_text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "(2 + 3) * 4"}}\n</tool_call>'
    with FakeOpenAI([error_reply(400, NO_PARSER), chat_reply(call_text), chat_reply("The answer is 20")]) as fake:
        answer = await calculator_agent.run(TASK, _ctx(fake))
        fake.replies.append(chat_reply("7"))
        assert await calculator_agent.run(TASK, _ctx(fake)) == "7"
    assert answer == "The answer is 20"
    # the second episode on the same server skips the refused "auto" call
    assert [r["tool_choice"] for r in fake.requests] == ["auto", "none", "none", "none"]
    assistant, tool = fake.requests[2]["messages"][-2:]
    assert assistant == {"role": "assistant", "content": call_text}  # verbatim: same tokens next turn
    assert tool["role"] == "tool" and tool["content"] == "20"


async def test_tool_errors_go_back_to_the_model_and_turn_limit_ends_the_episode():
    replies = [chat_reply(tool_calls=[_call("__import__('os')")]),
               chat_reply(tool_calls=[{"name": "search", "arguments": "{}"}]),
               chat_reply(tool_calls=[{"name": "calculator", "arguments": "not json"}])]
    with FakeOpenAI(replies) as fake:
        answer = await calculator_agent.run(TASK, _ctx(fake, max_turns=3))
    assert answer == ""  # still calling tools at the limit: no final answer
    assert len(fake.requests) == 3
    tool_replies = [m["content"] for m in fake.requests[2]["messages"] if m["role"] == "tool"]
    assert tool_replies[0].startswith("error: unsupported character")
    assert "unknown tool 'search'" in tool_replies[1]


def test_hermes_parser_reads_several_calls():
    text = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2\\"}"}</tool_call>'
            '<tool_call>garbage</tool_call>')
    calls = calculator_agent.parse_hermes_calls(text, turn=2)
    assert [(c.id, c.name) for c in calls] == [("call_2_0", "calculator"), ("call_2_1", "calculator"),
                                               ("call_2_2", "")]
    assert [calculator_agent.run_tool(c) for c in calls] == ["2", "2", "error: unknown tool ''; the only tool is 'calculator'"]
