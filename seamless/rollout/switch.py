"""The role switch of a GPU that both trains and rolls out: who holds the device's memory when.

vLLM holds its weights and KV cache (most of the GPU) and the trainer's optimizer state wants the
same memory, so parking a server (out of the proxy's rotation) is not enough on a GPU. The order,
as verl, SkyRL and slime drive vLLM's sleep mode and DeepSpeed's state offload:

    rollout -> train:  unregister and pause (the fleet's park), vLLM sleeps (level 2: the weights
                       are discarded, new ones follow), the trainer reloads its offloaded state
    train -> rollout:  the trainer offloads optimizer state and gradients, vLLM wakes its weights,
                       the new weights arrive, the trainer offloads its parameters, vLLM wakes its
                       KV cache; then (the publisher) cache reset, stamp, resume, and the fleet
                       re-registers the server

`ColocatedSwitch` does the memory moves; the fleet calls `to_train` when it parks a server and the
publisher calls `before_load` / `after_load` around the weights of a rejoining one. Without sleep
mode (vLLM on CPU has none, and a server alone on its GPU needs none) `NO_SWITCH` does nothing.
Every move is timed (`moves`), for the timeline and the step's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from seamless.rollout.server_http import post_each

OPTIMIZER_AND_GRADS = ("optimizer", "grads")
PARAMS = ("params",)


class MemorySwitch(Protocol):
    def to_train(self, urls: Sequence[str]) -> None:
        """The parked servers give their memory to the trainer."""

    def before_load(self, urls: Sequence[str]) -> None:
        """Memory for the weights about to arrive."""

    def after_load(self, urls: Sequence[str]) -> None:
        """The rest of the servers' memory back, once the weights are in."""

    def take_moves(self) -> list[Move]:
        """The moves since the last call, each timed (for one step's metrics)."""


class TrainerMemory(Protocol):
    """The trainer's ranks on the switching GPUs, as the switch needs them."""

    def offload_states(self, kinds: Sequence[str]) -> int:
        """Move these states (`optimizer`, `grads`, `params`) to host memory; bytes freed."""

    def reload_states(self) -> None:
        """Everything offloaded back on the device, before a step."""


class _NoSwitch:
    def to_train(self, urls: Sequence[str]) -> None:
        pass

    def before_load(self, urls: Sequence[str]) -> None:
        pass

    def after_load(self, urls: Sequence[str]) -> None:
        pass

    def take_moves(self) -> list[Move]:
        return []


NO_SWITCH: MemorySwitch = _NoSwitch()


@dataclass(frozen=True)
class Move:
    """One part of a switch: what moved, on which servers' GPUs, when (time.monotonic) and how long."""

    name: str
    seconds: float
    freed_bytes: int = 0
    started: float = 0.0
    urls: tuple[str, ...] = ()


@dataclass
class ColocatedSwitch:
    """Sleep and wake for vLLM servers that share their GPUs with trainer ranks (sleep mode on)."""

    trainer: TrainerMemory
    timeout_s: float = 600.0
    moves: list[Move] = field(default_factory=list)

    def to_train(self, urls: Sequence[str]) -> None:
        # level 2 drops the weights instead of copying them to host memory: new ones always follow
        self._timed("vllm_sleep", urls, lambda: post_each(urls, "/sleep", params={"level": 2}, timeout_s=self.timeout_s))
        self._timed("trainer_reload", urls, self.trainer.reload_states)

    def before_load(self, urls: Sequence[str]) -> None:
        self._timed("trainer_offload_optimizer", urls, lambda: self.trainer.offload_states(OPTIMIZER_AND_GRADS))
        self._timed("vllm_wake_weights", urls, lambda: self._wake(urls, "weights"))

    def after_load(self, urls: Sequence[str]) -> None:
        self._timed("trainer_offload_params", urls, lambda: self.trainer.offload_states(PARAMS))
        self._timed("vllm_wake_kv_cache", urls, lambda: self._wake(urls, "kv_cache"))

    def _wake(self, urls: Sequence[str], tag: str) -> None:
        post_each(urls, "/wake_up", params={"tags": tag}, timeout_s=self.timeout_s)

    def _timed(self, name: str, urls: Sequence[str], move) -> None:
        started = time.monotonic()
        result = move()
        freed = result if isinstance(result, int) else 0
        self.moves.append(Move(name, time.monotonic() - started, freed, started, tuple(urls)))

    def take_moves(self) -> list[Move]:
        moves, self.moves = self.moves, []
        return moves
