"""`calculator`: a multi-turn agent that offers a calculator tool through the OpenAI `tools` API.

Each turn it sends the conversation with the tool definition; tool calls in the reply are run
by `calculator_tool.calculate` (a parser, never eval) and their results go back as `tool`
messages. The episode ends at the first reply without a tool call (its text is the answer) or
after `ctx.max_turns` LLM calls (no answer).

Tool calls are read from the structured `tool_calls` of the reply (vLLM started with
`--enable-auto-tool-choice --tool-call-parser hermes`). A server without a tool-call parser
refuses `tool_choice="auto"`; the agent then sends `tool_choice="none"` (the tools are still
rendered into the prompt) and reads the Hermes `<tool_call>` blocks from the reply text itself,
so the same agent works against either server.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai

from agents.calculator_tool import calculate
from seamless.agent.api import AgentContext
from seamless.agent.tasks import Task
from seamless.run.warmup import IM_END, render_chat

log = logging.getLogger("agents.calculator")

SYSTEM_PROMPT = "Use the calculator tool, then answer with the final number only."
TOOL_NAME = "calculator"
CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]},
    },
}
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_NO_PARSER_HINTS = ("enable-auto-tool-choice", "tool-call-parser")
# hosts known to lack a tool-call parser, so later episodes skip the refused first call
_HOSTS_WITHOUT_PARSER: set[str] = set()


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them: a JSON object, as text."""


def build_messages(task: Task) -> list[dict]:
    """The first request's conversation (the warm-start data renders exactly these, with the tool)."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.prompt}]


def run_tool(call: ToolCall) -> str:
    """The tool message text for one call; mistakes are reported to the model, never raised."""
    if call.name != TOOL_NAME:
        return f"error: unknown tool {call.name!r}; the only tool is {TOOL_NAME!r}"
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return 'error: arguments are not JSON; write {"expression": "..."}'
    expression = arguments.get("expression") if isinstance(arguments, dict) else None
    if not isinstance(expression, str):
        return 'error: missing "expression"; write {"expression": "..."}'
    return calculate(expression)


def parse_hermes_calls(text: str, turn: int) -> list[ToolCall]:
    """Tool calls written as Hermes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` text."""
    calls = []
    for i, body in enumerate(_HERMES_CALL.findall(text or "")):
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        arguments = payload.get("arguments", {})
        calls.append(ToolCall(id=f"call_{turn}_{i}", name=str(payload.get("name", "")),
                              arguments=arguments if isinstance(arguments, str) else json.dumps(arguments)))
    return calls


def read_reply(message, turn: int) -> tuple[list[ToolCall], dict]:
    """The reply's tool calls, and the assistant message to append to the conversation."""
    if message.tool_calls:
        calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
                 for c in message.tool_calls]
        assistant = {"role": "assistant", "content": message.content or "", "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]}
        return calls, assistant
    # no parser on the server: keep the text verbatim so the next prompt extends the same tokens
    return parse_hermes_calls(message.content, turn), {"role": "assistant", "content": message.content or ""}


async def run(task: Task, ctx: AgentContext) -> str:
    messages = build_messages(task)
    host = urlsplit(ctx.base_url).netloc
    tool_choice = "none" if host in _HOSTS_WITHOUT_PARSER else "auto"
    async with ctx.openai_client() as client:
        for turn in range(ctx.max_turns):
            try:
                reply = await _complete(client, ctx, messages, tool_choice)
            except openai.BadRequestError as exc:
                if tool_choice != "auto" or not any(h in str(exc) for h in _NO_PARSER_HINTS):
                    raise
                log.info("%s has no tool-call parser; reading <tool_call> blocks from the reply text", host)
                _HOSTS_WITHOUT_PARSER.add(host)
                tool_choice = "none"
                reply = await _complete(client, ctx, messages, tool_choice)
            calls, assistant = read_reply(reply.choices[0].message, turn)
            if not calls:
                return reply.choices[0].message.content or ""
            messages.append(assistant)
            messages.extend({"role": "tool", "tool_call_id": call.id, "content": run_tool(call)}
                            for call in calls)
    return ""  # turn limit reached while still calling tools: no final answer


async def _complete(client: openai.AsyncOpenAI, ctx: AgentContext, messages: list[dict], tool_choice: str):
    return await client.chat.completions.create(
        model=ctx.model, messages=messages, tools=[CALCULATOR_TOOL], tool_choice=tool_choice,
        temperature=ctx.sampling.temperature, max_tokens=ctx.sampling.max_tokens, top_p=ctx.sampling.top_p)


def calculator_expression(task: Task) -> str:
    """The expression the calculator should be called with, from an arithmetic task's metadata."""
    meta = task.metadata
    if not {"a", "op", "b"} <= meta.keys():
        raise ValueError(f"task {task.task_id} has no a/op/b metadata; the calculator warm-start needs "
                         "generated arithmetic tasks (data.source: arithmetic)")
    return f"{meta['a']} {meta['op']} {meta['b']}"


def warmup(task: Task, tokenizer, tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """Warm-start data (seamless.agent.api.WarmupFn): the prompt with the tool, a Hermes tool call,
    the tool's result, then `answer<|im_end|>`. `tools`: the tool as another agent presents it
    (default: this agent's CALCULATOR_TOOL)."""
    tools = tools or [CALCULATOR_TOOL]
    messages = build_messages(task)
    expression = calculator_expression(task)
    arguments = json.dumps({"expression": expression})
    call_text = f"<tool_call>\n{json.dumps({'name': TOOL_NAME, 'arguments': {'expression': expression}})}\n</tool_call>"
    # what the agent appends after a tool call (structured form; the template renders it as call_text)
    after_call = messages + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0_0", "type": "function", "function": {"name": TOOL_NAME, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_0_0", "content": calculate(expression)}]
    prompt = render_chat(tokenizer, messages, tools, True)
    second_prompt = render_chat(tokenizer, after_call, tools, True)
    generated = call_text + IM_END
    assert second_prompt.startswith(prompt + generated), "chat template does not extend the first prompt"
    between = second_prompt[len(prompt + generated):]  # "\n<|im_start|>tool\n...<|im_start|>assistant\n"
    return [(prompt, False), (generated, True), (between, False), (task.answer + IM_END, True)]


run.warmup = warmup
