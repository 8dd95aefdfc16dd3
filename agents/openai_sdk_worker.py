"""The `openai-agents` example's agent, written with the openai-agents SDK, run in the SDK's own venv.

The SDK's top-level module is named `agents`, like this repository's agents/ package, so it lives in
a venv of its own (scripts/setup.sh makes .venv/openai-agents) and this file runs there as one
long-lived process: `agents/openai_sdk_calculator.py` (seamless's side) writes one JSON line per
episode to its stdin and reads `{"id", "answer"}` or `{"id", "error"}` lines from its stdout.
Importing the SDK costs about 2 s of CPU, once per run instead of once per episode.

What an episode runs is plain SDK code: an `Agent` with one `@function_tool` on the SDK's default
model (the Responses API), `Runner.run` until the model answers without calling the tool.
"""

import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path

import agents
import openai

# the calculator tool of the `calculator` example (a parser, never eval), loaded by path: the
# repository's `agents` package cannot be imported here under its name
_spec = importlib.util.spec_from_file_location("calculator_tool", Path(__file__).with_name("calculator_tool.py"))
calculator_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calculator_tool)

INSTRUCTIONS = "Use the calculator tool, then answer with the final number only."


@agents.function_tool(strict_mode=False)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses."""
    return calculator_tool.calculate(expression)


_POOL = []


def _pool():
    """The connection pool every episode's client shares (made on first use, in the event loop)."""
    if not _POOL:
        _POOL.append(openai.DefaultAsyncHttpxClient())
    return _POOL[0]


async def episode(request: dict) -> str:
    # on the worker's one connection pool: a client with a pool of its own costs 42 ms of CPU to make
    # (its TLS context), 5 s of every 128-episode step
    client = openai.AsyncOpenAI(base_url=request["base_url"], api_key=request["api_key"], max_retries=0,
                                timeout=request["timeout_s"], http_client=_pool())
    agent = agents.Agent(name="calculator", instructions=INSTRUCTIONS, tools=[calculator], model=request["model"],
                         model_settings=agents.ModelSettings(temperature=request["temperature"], top_p=request["top_p"],
                                                             max_tokens=request["max_tokens"]))
    # the session's client for this run only: the provider's default model (Responses) on it; not
    # closed, which would close the shared pool
    config = agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client), tracing_disabled=True)
    result = await agents.Runner.run(agent, request["prompt"], max_turns=request["max_turns"], run_config=config)
    return str(result.final_output or "")


async def answer(request: dict, lock: asyncio.Lock) -> None:
    try:
        async with asyncio.timeout(request["timeout_s"]):
            reply = {"id": request["id"], "answer": await episode(request)}
    except agents.MaxTurnsExceeded:
        reply = {"id": request["id"], "answer": ""}  # still calling the tool at the turn limit: no answer
    except Exception as exc:  # the episode failed; the worker carries on with the others
        reply = {"id": request["id"], "error": f"{type(exc).__name__}: {exc}"[:2000]}
    async with lock:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


async def main() -> None:
    agents.set_tracing_disabled(True)
    logging.getLogger("openai.agents").setLevel(logging.CRITICAL)  # a failed episode's error goes back to seamless
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lock, running = asyncio.Lock(), set()
    while line := await reader.readline():
        task = asyncio.create_task(answer(json.loads(line), lock))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


if __name__ == "__main__":
    asyncio.run(main())
