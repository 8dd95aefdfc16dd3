"""One question, one reply: the shape of the `math` and `listing` agents, which differ only in the
instruction they give."""

from __future__ import annotations

from seamless.agent.api import AgentContext
from seamless.agent.tasks import Task
from seamless.run.warmup import IM_END, render_chat


class SingleTurn:
    """Sends [system, user] once and returns the reply's text; its warm-start data is exactly that
    prompt, then `answer<|im_end|>`."""

    def __init__(self, system_prompt: str):
        self.system_prompt = system_prompt

    def build_messages(self, task: Task) -> list[dict]:
        """The conversation the agent sends (the warm-start data renders exactly these messages)."""
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task.prompt}]

    async def run(self, task: Task, ctx: AgentContext) -> str:
        async with ctx.openai_client() as client:
            reply = await client.chat.completions.create(
                model=ctx.model, messages=self.build_messages(task), temperature=ctx.sampling.temperature,
                max_tokens=ctx.sampling.max_tokens, top_p=ctx.sampling.top_p)
        return reply.choices[0].message.content or ""

    def warmup(self, task: Task, tokenizer) -> list[tuple[str, bool]]:
        """Warm-start data (seamless.agent.api.WarmupFn)."""
        prompt = render_chat(tokenizer, self.build_messages(task), None, True)
        return [(prompt, False), (task.answer + IM_END, True)]
