"""The Responses API through the proxy: plain, streamed, tools, multi-turn; recorded token-exactly."""

import httpx
import openai
import pytest

from tests.proxy.helpers import Admin

pytestmark = pytest.mark.vllm

ADD_TOOL = {"type": "function", "name": "add", "description": "Add two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                           "required": ["a", "b"]}}


def _client(session: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=0)


def test_plain_response_is_recorded_with_vllms_own_prompt_and_tokens(tool_proxy, tool_vllm_server):
    admin = Admin(tool_proxy)
    session = admin.session()
    reply = _client(session).responses.create(model="policy", input="What is 3 + 4?", instructions="Be brief.",
                                              max_output_tokens=10, temperature=0.0)
    assert reply.model == "policy" and reply.output[0].type == "message"
    turn = admin.trajectory(session["session_id"])["turns"][0]
    # vLLM's own Responses route, greedy: same prompt tokens, same output tokens
    direct = httpx.post(f"{tool_vllm_server.url}/v1/responses", timeout=60, json={
        "model": "tiny", "input": "What is 3 + 4?", "instructions": "Be brief.", "max_output_tokens": 10,
        "temperature": 0.0, "enable_response_messages": True}).json()
    assert turn["prompt_token_ids"] == direct["input_messages"][0]["tokens"]
    assert turn["completion_token_ids"] == direct["output_messages"][0]["tokens"]
    assert reply.output_text == direct["output"][0]["content"][0]["text"]
    assert reply.status == direct["status"] and reply.usage.output_tokens == len(turn["completion_token_ids"])
    assert len(turn["logprobs"]) == len(turn["completion_token_ids"]) and turn["weight_versions"][0] == 0


def test_streamed_response_events_and_recording_match_the_plain_one(tool_proxy):
    admin = Admin(tool_proxy)
    recorded, texts = [], []
    for stream in (False, True):
        session = admin.session()
        client = _client(session)
        if stream:
            events = list(client.responses.create(model="m", input="Say hi", max_output_tokens=8, temperature=0.0,
                                                  stream=True))
            kinds = [e.type for e in events]
            assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
            assert [e.sequence_number for e in events] == list(range(len(events)))
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            final = events[-1].response
            assert final.output_text == deltas
            texts.append(final.output_text)
        else:
            texts.append(client.responses.create(model="m", input="Say hi", max_output_tokens=8,
                                                 temperature=0.0).output_text)
        turn = admin.trajectory(session["session_id"])["turns"][0]
        recorded.append((turn["prompt_token_ids"], turn["completion_token_ids"], turn["logprobs"]))
    assert texts[0] == texts[1] and recorded[0] == recorded[1]


def test_function_tool_multi_turn_by_input_and_by_previous_response_id(tool_proxy):
    admin = Admin(tool_proxy)
    session = admin.session()
    client = _client(session)
    first = client.responses.create(model="m", input="Add 2 and 3.", tools=[ADD_TOOL], tool_choice="required",
                                    max_output_tokens=200, temperature=0.0)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "add", first.output
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "5"}
    # the whole conversation as input (the openai-agents SDK's way) ...
    second = client.responses.create(model="m", input=[{"role": "user", "content": "Add 2 and 3."},
                                                       *[item.model_dump() for item in first.output], result],
                                     tools=[ADD_TOOL], max_output_tokens=8, temperature=0.0)
    # ... and the same turn by previous_response_id: the same prompt
    third = client.responses.create(model="m", previous_response_id=first.id, input=[result], tools=[ADD_TOOL],
                                    max_output_tokens=8, temperature=0.0)
    assert second.output_text == third.output_text
    turns = admin.trajectory(session["session_id"])["turns"]
    assert len(turns) == 3
    assert turns[1]["prompt_token_ids"] == turns[2]["prompt_token_ids"]
    # the second prompt starts with the first one (the template re-renders the call's arguments, so
    # the recorded completion itself may differ: the trajectory merge branches there)
    assert turns[1]["prompt_token_ids"][:len(turns[0]["prompt_token_ids"])] == turns[0]["prompt_token_ids"]

    other = _client(admin.session())  # another session cannot continue this session's response
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="m", previous_response_id=first.id, input="hi", max_output_tokens=2)


def test_streamed_function_call_events(tool_proxy):
    admin = Admin(tool_proxy)
    session = admin.session()
    events = list(_client(session).responses.create(model="m", input="Add 1 and 1.", tools=[ADD_TOOL],
                                                    tool_choice={"type": "function", "name": "add"},
                                                    max_output_tokens=200, temperature=0.0, stream=True))
    final = events[-1].response
    call = next(item for item in final.output if item.type == "function_call")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert call.name == "add" and done.arguments == call.arguments
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == call.arguments
    assert len(admin.trajectory(session["session_id"])["turns"]) == 1


def test_unsupported_tool_type_is_an_openai_error(tool_proxy):
    client = _client(Admin(tool_proxy).session())
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="hi", tools=[{"type": "web_search"}])
    assert "only function tools" in str(caught.value)
