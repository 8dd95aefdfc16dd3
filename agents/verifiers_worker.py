"""A verifiers environment as seamless's agent, run in verifiers' own venv (.venv/verifiers).

One long-lived process per run: `python verifiers_worker.py ENV_ID [PATH ...]` loads the
environment with `vf.load_environment(ENV_ID)` (PATHs, e.g. agents/verifiers_envs, go first on
sys.path), writes one line describing it (`{"ready": true, "system_prompt", "few_shot"}`, or
`{"error"}`), then runs one episode per JSON line on stdin and writes `{"id", "answer", "reward",
"metrics"}` or `{"id", "error"}` lines. agents/verifiers_agent.py is seamless's side.

An episode is verifiers' own code, unchanged: `env.run_rollout` (the environment's rollout, then
its rubric) with a `vf.OpenAIChatCompletionsClient` on an `openai.AsyncOpenAI` whose base URL and
key are the episode's proxy session, so every model call is recorded there.
"""

import asyncio
import json
import logging
import os
import sys

# the protocol gets stdout to itself: whatever else prints (an environment's own code) goes to stderr
PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _load(env_id: str, paths: list[str]):
    sys.path[:0] = paths
    import verifiers as vf

    vf.setup_logging("ERROR")  # stdout carries the protocol; a failed episode's error goes back to seamless
    logging.getLogger("verifiers").setLevel(logging.CRITICAL)
    return vf, vf.load_environment(env_id)


_POOL = []


def _pool():
    """The connection pool every episode's client shares (made on first use, in the event loop)."""
    if not _POOL:
        import openai

        _POOL.append(openai.DefaultAsyncHttpxClient())
    return _POOL[0]


async def episode(vf, env, request: dict) -> dict:
    import openai

    # on the worker's one connection pool: a client with a pool of its own costs 42 ms of CPU to make
    # (its TLS context), 5 s of every 128-episode step
    client = openai.AsyncOpenAI(base_url=request["base_url"], api_key=request["api_key"], max_retries=0,
                                timeout=request["timeout_s"], http_client=_pool())
    rollout_input = {"prompt": request["prompt"], "answer": request["answer"], "example_id": request["id"],
                     "info": {"task_id": request["task_id"]}}
    sampling = {"temperature": request["temperature"], "top_p": request["top_p"], "max_tokens": request["max_tokens"]}
    # not closed: closing it would close the shared pool
    output = await env.run_rollout(rollout_input, vf.OpenAIChatCompletionsClient(client), request["model"], sampling)
    if output.get("error") and not _policy_error(output["error"]):
        raise RuntimeError(f"the rollout failed: {output['error']}")
    answer = env.parser.parse_answer(output["completion"]) or ""
    return {"answer": answer, "reward": float(output["reward"]), "metrics": output.get("metrics") or {}}


def _policy_error(error) -> bool:
    """Whether a rollout's error is the model's own doing (an empty reply, a tool call that does not
    parse): verifiers scores such a rollout, and it trains like any answer; any other error (the
    infrastructure, a prompt too long) fails the episode."""
    from verifiers.legacy import errors

    kind = getattr(errors, error.get("error", ""), None) if isinstance(error, dict) else None
    return isinstance(kind, type) and issubclass(kind, (errors.ModelError, errors.ToolError))


async def answer(vf, env, request: dict, lock: asyncio.Lock) -> None:
    try:
        async with asyncio.timeout(request["timeout_s"]):
            reply = {"id": request["id"], **await episode(vf, env, request)}
    except Exception as exc:  # the episode failed; the worker carries on with the others
        reply = {"id": request["id"], "error": f"{type(exc).__name__}: {exc}"[:2000]}
    async with lock:
        PROTOCOL.write(json.dumps(reply) + "\n")


async def main(env_id: str, paths: list[str]) -> None:
    try:
        vf, env = _load(env_id, paths)
    except Exception as exc:
        PROTOCOL.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n")
        return
    PROTOCOL.write(json.dumps({"ready": True, "system_prompt": env.system_prompt, "few_shot": env.few_shot or [],
                               "environment": type(env).__name__}) + "\n")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lock, running = asyncio.Lock(), set()
    while line := await reader.readline():
        task = asyncio.create_task(answer(vf, env, json.loads(line), lock))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
