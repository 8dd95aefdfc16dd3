"""Run by test_agent_frameworks.py in its own interpreter (the SDK's module `agents` would collide
with this repository's agents/ package): an openai-agents SDK agent with one function tool on the
SDK's default model (Responses), run plainly and streamed. Prints a JSON report on its last line.

The tiny test model never ends a free answer within max_tokens, and the SDK (0.24) raises on a
Response whose status is `incomplete` (vLLM's status for finish_reason=length, through the proxy or
not). So every call here is the named tool call (a strict tool: vLLM's grammar closes its arguments),
and the agent ends after its second call, whose input holds the first call and the tool's output."""

import asyncio
import json
import sys

import agents
import openai


async def main(base_url: str, api_key: str, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key)
    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(client, use_for_tracing=False)
    runs = []

    @agents.function_tool
    def ping() -> str:
        """Check that the server is up."""
        runs.append(1)
        return "pong"

    def after_two_calls(context, results) -> agents.ToolsToFinalOutputResult:
        done = len(runs) % 2 == 0
        return agents.ToolsToFinalOutputResult(is_final_output=done, final_output=results[0].output if done else None)

    settings = agents.ModelSettings(tool_choice="ping", max_tokens=max_tokens, temperature=0.0)
    agent = agents.Agent(name="pinger", instructions="Use the tool.", tools=[ping], model="policy",
                         model_settings=settings, tool_use_behavior=after_two_calls, reset_tool_choice=False)
    default_model = type(agents.OpenAIProvider().get_model("policy")).__name__
    result = await agents.Runner.run(agent, "Is the server up?", max_turns=3)
    streamed = agents.Runner.run_streamed(agent, "Is the server up?", max_turns=3)
    kinds = sorted({event.type async for event in streamed.stream_events()})
    await client.close()
    return {"default_model": default_model, "tool_runs": len(runs), "final_output": str(result.final_output),
            "streamed_output": str(streamed.final_output), "stream_events": kinds}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
