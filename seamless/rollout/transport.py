"""How new weights reach the servers: safetensors files reloaded from disk (the CPU path and the
fallback), or sent by the trainer's ranks from their GPUs (CUDA IPC or NCCL, per server).

Both split an update the same way: `stage` (before the pause, rollout keeps running) and `load`
(while paused, every server at once). The weight publisher times the two separately.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from seamless.errors import ServiceError
from seamless.rollout.server_http import post_each
from seamless.rollout.weights import WeightSource, safetensors_files, write_buckets


class WeightTransport(Protocol):
    name: str

    def stage(self, source: WeightSource, version: int) -> int:
        """Make `version` ready to load; returns its size in bytes."""

    def load(self, urls: Sequence[str], version: int) -> None:
        """Load the staged `version` into these (paused) servers."""

    def server_args(self) -> list[str]:
        """Extra vLLM arguments a server needs for this transport."""


class DiskTransport:
    """Safetensors in a folder (the run folder, or /dev/shm), reloaded with /collective_rpc.

    A folder source (e.g. Trainer.export_hf output) is reloaded where it is: no copy. Anything
    else is written once per version; older versions this transport wrote are deleted.
    """

    name = "disk"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._staged: dict[int, Path] = {}
        self._owned: set[Path] = set()

    def stage(self, source: WeightSource, version: int) -> int:
        if isinstance(source, (str, Path)):
            folder = Path(source).resolve()
            size = sum(f.stat().st_size for f in safetensors_files(folder))
        else:
            folder = self.root / f"v{version}"
            shutil.rmtree(folder, ignore_errors=True)
            size = write_buckets(source, folder)
            self._owned.add(folder)
        self._forget_older_than(version)
        self._staged[version] = folder
        return size

    def folder(self, version: int) -> Path:
        if version not in self._staged:
            raise KeyError(f"weights version {version} was never staged; publish weights through "
                           "the fleet's publisher (fleet.publish) first")
        return self._staged[version]

    def load(self, urls: Sequence[str], version: int) -> None:
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(self.folder(version))}}
        post_each(urls, "/collective_rpc", json=body)

    def server_args(self) -> list[str]:
        return []

    def _forget_older_than(self, version: int) -> None:
        # keep the version servers run now (restarts reload it) until the new one is staged
        for old in [v for v in self._staged if v < version]:
            for folder in (self._staged.pop(old),):
                if folder in self._owned:
                    self._owned.discard(folder)
                    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class PushPlan:
    """Which servers get the trainer's weights how, chosen per server (GPUs only)."""

    ipc: dict[int, str] = field(default_factory=dict)
    """Trainer rank -> URL of the server on that rank's own GPU: CUDA IPC from the rank."""
    nccl: tuple[str, ...] = ()
    """Servers on GPUs of their own: an NCCL broadcast from trainer rank 0."""
    disk: tuple[str, ...] = ()
    """Servers neither can reach (a server without a GPU): safetensors through the fallback."""


class WeightPusher(Protocol):
    """The trainer, as a source of weights its ranks send themselves."""

    def push_weights(self, plan: PushPlan) -> int:
        """Every rank sends its weights as the plan says; bytes sent."""

    def weights_id(self) -> tuple[int, int]:
        """Changes whenever the trainer's weights do (it counts its optimizer steps)."""

    def weight_bytes(self) -> int:
        """The size of the full policy weights."""


class RankTransport:
    """On GPUs: the trainer's ranks send their weights themselves (trainer/weight_push.py), CUDA IPC
    to a server on a rank's own GPU and NCCL from rank 0 to servers on GPUs of their own. Weights
    from anywhere else (the model folder at a warm start, a checkpoint's export at a resume) go
    through the disk fallback; so do the weights of a version the trainer has trained past (a
    server restarted mid-step cannot get them from the ranks, and rejoins at the next version).

    `pusher` (the trainer) and `plan` (the fleet's choice per server) are set once both exist.
    """

    name = "ranks"

    def __init__(self, fallback: DiskTransport):
        self.fallback = fallback
        self.pusher: WeightPusher | None = None
        self.plan: Callable[[Sequence[str]], PushPlan] | None = None
        self._from_ranks: tuple[int, tuple[int, int]] | None = None  # (version, trainer's weights id)

    def stage(self, source: WeightSource, version: int) -> int:
        if self.pusher is not None and source is self.pusher:
            # nothing to copy: the ranks hold the weights and send them at load
            self._from_ranks = (version, self.pusher.weights_id())
            return self.pusher.weight_bytes()
        self._from_ranks = None
        return self.fallback.stage(source, version)

    def load(self, urls: Sequence[str], version: int) -> None:
        if self._from_ranks is None or self._from_ranks[0] != version:
            self.fallback.load(urls, version)
            return
        assert self.pusher is not None and self.plan is not None, "RankTransport used before the fleet set it up"
        if self.pusher.weights_id() != self._from_ranks[1]:
            raise ServiceError(f"weights version {version} are no longer in the trainer (it has trained since); "
                               "the server gets the next version when it is published")
        plan = self.plan(urls)
        if plan.disk:
            raise ServiceError(f"servers {list(plan.disk)} run without a GPU in a run whose trainer sends weights "
                               "from its GPUs; set rollout.weight_sync: disk")
        self.pusher.push_weights(plan)

    def server_args(self) -> list[str]:
        return []  # per server: the fleet picks each one's backend (VLLMServerOptions.weight_transfer)
