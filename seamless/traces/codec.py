"""A turn in Redis: a JSON header followed by packed int32/float32 arrays, and a session's hash as a
record. `decode_*` raise `CorruptRecord` on anything seamless did not write."""

from __future__ import annotations

import dataclasses
import json
import struct
from array import array
from dataclasses import dataclass
from typing import Any

from seamless.errors import SeamlessError
from seamless.traces.constraints import constraints_of
from seamless.types import Turn

_HEADER = struct.Struct("<I")  # length of the JSON header of an encoded turn


CLOCK = 2
"""Version of the call clock in a turn record. Records without one (clock 1) stamped `started_at`
when the server's headers arrived and had no other stamps: they decode with that time as sent,
answered and first token, so their calls count no queueing (which they did not measure)."""


class CorruptRecord(SeamlessError):
    """Data in Redis that does not decode as seamless wrote it (another program's keys, or a bug)."""


def _packed(values: list[int] | list[float], typecode: str) -> bytes:
    arr = array(typecode, values)
    if arr.itemsize != 4:  # 'i' is 4 bytes on every platform seamless runs on; say so if not
        raise SeamlessError(f"array typecode {typecode!r} is {arr.itemsize} bytes here, expected 4")
    return arr.tobytes()


def encode_turn(turn: Turn, request: dict[str, Any] | None = None, call_id: str | None = None,
                same_prompt: bool = False) -> bytes:
    """Turn → bytes: a JSON header (scalars, the request as sent) followed by packed arrays.

    `call_id` groups the turns (choices) of one call; `same_prompt` leaves out a prompt equal to
    the one of the call's previous turn (decode_turns restores it), so n choices store it once."""
    # no index in the record: a turn's index is its position in the session's list (the append
    # is atomic, so concurrent calls of one session can never collide on an index)
    header = {"session_id": turn.session_id, "finish_reason": turn.finish_reason,
              "upstream": turn.upstream, "started_at": turn.started_at, "ended_at": turn.ended_at,
              "clock": CLOCK, "sent_at": turn.sent_at, "answered_at": turn.answered_at,
              "first_token_at": turn.first_token_at,
              "n_prompt": len(turn.prompt_token_ids), "n_completion": len(turn.completion_token_ids),
              "request": request}
    if call_id is not None:
        header["call"] = call_id
    if same_prompt:
        header["same_prompt"] = True
    if turn.constraints:
        header["constrained"] = list(turn.constraints)
    head = json.dumps(header, separators=(",", ":")).encode()
    prompt = b"" if same_prompt else _packed(turn.prompt_token_ids, "i")
    return b"".join([_HEADER.pack(len(head)), head, prompt, _packed(turn.completion_token_ids, "i"),
                     _packed(turn.completion_logprobs, "f"), _packed(turn.weight_versions, "i")])


def encode_call(turns: list[Turn], request: dict[str, Any] | None, call_id: str) -> list[bytes]:
    """The records of one call's turns: the request on the first only, a shared prompt once; every
    turn marked with the constraints its request sampled under (`traces/constraints.py`)."""
    if marked := constraints_of(request):
        turns = [turn if turn.constraints else dataclasses.replace(turn, constraints=marked) for turn in turns]
    return [encode_turn(turn, request if i == 0 else None, call_id,
                        same_prompt=i > 0 and turn.prompt_token_ids == turns[i - 1].prompt_token_ids)
            for i, turn in enumerate(turns)]


def decode_turn(blob: bytes, index: int, previous: Turn | None = None) -> tuple[Turn, dict[str, Any] | None]:
    """Inverse of encode_turn (index: position in the list; `previous`: the turn before it, whose
    prompt a `same_prompt` record shares); raises CorruptRecord on anything else."""
    return _decode(blob, index, previous)[:2]


def decode_turns(blobs: list[bytes], voided: set[bytes] | set[str] = frozenset()
                 ) -> list[tuple[Turn, dict[str, Any] | None]]:
    """A session's records as turns with their calls' requests, skipping voided calls; indexes
    count the turns kept."""
    voided = {v.decode() if isinstance(v, bytes) else v for v in voided}
    kept: list[tuple[Turn, dict[str, Any] | None]] = []
    previous: Turn | None = None
    requests: dict[str, Any] = {}
    for blob in blobs:
        turn, request, call = _decode(blob, len(kept), previous)
        previous = turn
        if call is not None:
            request = requests.setdefault(call, request)
            if call in voided:
                continue
        kept.append((turn, request))
    return kept


def _decode(blob: bytes, index: int, previous: Turn | None) -> tuple[Turn, dict[str, Any] | None, str | None]:
    try:
        (head_len,) = _HEADER.unpack_from(blob)
        header = json.loads(blob[_HEADER.size:_HEADER.size + head_len])
        n_p, n_c = header["n_prompt"], header["n_completion"]
        shared = bool(header.get("same_prompt"))
        if shared and (previous is None or len(previous.prompt_token_ids) != n_p):
            raise CorruptRecord("turn record shares the prompt of a turn that is not before it")
        offset = _HEADER.size + head_len
        expected = offset + 4 * ((0 if shared else n_p) + 3 * n_c)
        if len(blob) != expected:
            raise CorruptRecord(f"turn record is {len(blob)} bytes, expected {expected}")

        def take(typecode: str, count: int) -> list:
            nonlocal offset
            arr = array(typecode)
            arr.frombytes(blob[offset:offset + 4 * count])
            offset += 4 * count
            return arr.tolist()

        prompt = list(previous.prompt_token_ids) if shared else take("i", n_p)
        completion = take("i", n_c)
        logprobs, versions = take("f", n_c), take("i", n_c)
        turn = Turn(session_id=header["session_id"], index=index, prompt_token_ids=prompt,
                    completion_token_ids=completion, completion_logprobs=logprobs,
                    weight_versions=versions, finish_reason=header["finish_reason"],
                    upstream=header["upstream"], constraints=tuple(header.get("constrained", ())),
                    **_clock(header))
        return turn, header.get("request"), header.get("call")
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptRecord(f"turn record does not decode ({exc}); was it written by seamless?") from exc


def _clock(header: dict[str, Any]) -> dict[str, float]:
    started, ended = float(header["started_at"]), float(header["ended_at"])
    if header.get("clock") is None:  # clock 1 (see CLOCK): its one stamp was the server's headers
        return {"started_at": started, "ended_at": ended, "sent_at": started, "answered_at": started,
                "first_token_at": started}
    return {"started_at": started, "ended_at": ended, "sent_at": float(header["sent_at"]),
            "answered_at": float(header["answered_at"]), "first_token_at": float(header["first_token_at"])}


@dataclass(frozen=True)
class SessionRecord:
    """What the store knows about a session."""

    session_id: str
    api_key: str
    status: str
    created_at: float
    group_id: str | None
    task_id: str | None
    metadata: dict[str, Any]
    reward: float | None
    turn_rewards: list[float] | None
    num_turns: int

    @classmethod
    def from_hash(cls, sid: str, fields: dict[bytes, bytes], num_turns: int) -> SessionRecord:
        get = lambda name: fields.get(name.encode(), b"").decode() or None  # noqa: E731
        try:
            return cls(session_id=sid, api_key=get("api_key") or "", status=get("status") or "open",
                       created_at=float(get("created_at") or 0.0), group_id=get("group_id"),
                       task_id=get("task_id"), metadata=json.loads(get("metadata") or "{}"),
                       reward=float(r) if (r := get("reward")) is not None else None,
                       turn_rewards=json.loads(t) if (t := get("turn_rewards")) else None,
                       num_turns=num_turns)
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(f"session {sid} hash does not decode ({exc})") from exc
