"""Token-in/token-out (`proxy.token_in_token_out`): the next prompt of a multi-turn session is
built from the token ids the proxy recorded, so an agent's history is never re-tokenized.

Without it, the server renders the agent's messages again, and the text of an earlier answer
can tokenize differently from the tokens the model sampled (BPE has several spellings of one
string). The trainer then sees a prompt that does not extend the previous turn, and the merge
starts a new branch. With it, a chat call whose messages continue a recorded call (that call's
messages, then one assistant message: its answer, then new messages) is sent with

    prompt = recorded prompt + recorded completion + template tokens of the new messages

where the template tokens come from the server's own `/tokenize` (rendering the conversation
with and without the new messages; the difference is what they add). vLLM takes such a prompt on
the chat route (`kv_transfer_params.prompt_token_ids`) and still parses tool calls and answers in
chat shape. Calls that do not continue a recorded one, or whose template does not render
history stably, are rendered as usual (counted as fallbacks on /metrics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from seamless.types import Turn

log = logging.getLogger("seamless.proxy")

# keys of a message that change what the template renders (the rest is client bookkeeping)
_MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")


@dataclass(frozen=True)
class Continuation:
    """A recorded call that the new call continues."""

    turn: Turn
    messages_before_answer: int
    """How many of the new call's messages the recorded call had (its answer comes next)."""


def _normalized(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    kept = {k: message.get(k) for k in _MESSAGE_KEYS if message.get(k) not in (None, "", [])}
    if "tool_calls" in kept:  # ids and argument spacing are client details; name and arguments matter
        kept["tool_calls"] = [((c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments"))
                              for c in kept["tool_calls"] if isinstance(c, dict)]
    return kept


def find_continuation(messages: list[Any], recorded: list[tuple[Turn, dict[str, Any] | None]]) -> Continuation | None:
    """The latest recorded single-choice chat call that `messages` continue, if any."""
    for turn, request in reversed(recorded):
        previous = (request or {}).get("messages")
        if not isinstance(previous, list) or (request or {}).get("n", 1) != 1:
            continue
        k = len(previous)
        if len(messages) <= k + 1 or not isinstance(messages[k], dict) or messages[k].get("role") != "assistant":
            continue
        if [_normalized(m) for m in messages[:k]] == [_normalized(m) for m in previous]:
            return Continuation(turn, k)
    return None


class TemplateDrift(Exception):
    """The template renders history differently once more messages follow; not safe to splice."""


def splice(turn: Turn, closing: list[int], new_part: list[int]) -> list[int]:
    """The next prompt: the recorded call's prompt and answer, the template's closing of an
    answer (less the end-of-turn token when the model sampled it), the new messages' tokens."""
    completion = turn.completion_token_ids
    if completion and closing and completion[-1] == closing[0]:
        closing = closing[1:]
    return [*turn.prompt_token_ids, *completion, *closing, *new_part]


def difference(longer: list[int], shorter: list[int], what: str) -> list[int]:
    """What `longer` adds to `shorter`, which must be its prefix."""
    if longer[:len(shorter)] != shorter:
        raise TemplateDrift(f"the chat template renders earlier messages differently when {what} follows")
    return longer[len(shorter):]


async def render(client: httpx.AsyncClient, upstream_url: str, model: str, body: dict[str, Any],
                 messages: list[Any], generation_prompt: bool) -> list[int]:
    """Token ids of `messages` as the server's chat template renders them."""
    request: dict[str, Any] = {"model": model, "messages": messages, "add_generation_prompt": generation_prompt}
    for key in ("tools", "chat_template_kwargs"):
        if body.get(key) is not None:
            request[key] = body[key]
    response = await client.post(f"{upstream_url}/tokenize", json=request, timeout=30.0)
    if response.status_code != 200:
        raise TemplateDrift(f"/tokenize answered {response.status_code}: {response.text[:300]}")
    return response.json()["tokens"]


async def prompt_ids(client: httpx.AsyncClient, upstream_url: str, model: str, body: dict[str, Any],
                     recorded: list[tuple[Turn, dict[str, Any] | None]]) -> list[int] | None:
    """The token-in/token-out prompt of this chat call, or None to let the server render it.

    Four renderings by the server's template: the recorded call's messages with the generation
    prompt, and with an empty answer closed (their difference is how the template closes an
    answer); the messages through the answer, and all of them with the generation prompt (their
    difference is what the new messages add).
    """
    messages = body.get("messages") or []
    found = find_continuation(messages, recorded)
    if found is None:
        return None
    k = found.messages_before_answer

    async def tokens(part: list[Any], generation_prompt: bool) -> list[int]:
        return await render(client, upstream_url, model, body, part, generation_prompt)

    opened = await tokens(messages[:k], True)
    closed_empty = await tokens([*messages[:k], {"role": "assistant", "content": ""}], False)
    through_answer = await tokens(messages[:k + 1], False)
    whole = await tokens(messages, body.get("add_generation_prompt", True))
    return splice(found.turn, difference(closed_empty, opened, "an answer"),
                  difference(whole, through_answer, "a new message"))
