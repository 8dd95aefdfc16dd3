"""`listing`: a single-turn agent for tasks whose answer is a list ("List the numbers from 3 to 50.").

The same shape as `math` with its own instruction; its right answers are long (about three tokens
a number), so generation, not per-request overhead, dominates an episode
(`recipes/grpo_tiny_long_cpu.yaml`).
"""

from __future__ import annotations

from seamless.agent.api import AgentContext
from seamless.agent.tasks import Task
from seamless.run.warmup import IM_END, render_chat

SYSTEM_PROMPT = "Answer with the numbers only, separated by spaces."


def build_messages(task: Task) -> list[dict]:
    """The conversation the agent sends (the warm-start data renders exactly these messages)."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.prompt}]


async def run(task: Task, ctx: AgentContext) -> str:
    async with ctx.openai_client() as client:
        reply = await client.chat.completions.create(
            model=ctx.model, messages=build_messages(task), temperature=ctx.sampling.temperature,
            max_tokens=ctx.sampling.max_tokens, top_p=ctx.sampling.top_p)
    return reply.choices[0].message.content or ""


def warmup(task: Task, tokenizer) -> list[tuple[str, bool]]:
    """Warm-start data (seamless.agent.api.WarmupFn): this agent's prompt, then `answer<|im_end|>`."""
    prompt = render_chat(tokenizer, build_messages(task), None, True)
    return [(prompt, False), (task.answer + IM_END, True)]


run.warmup = warmup
