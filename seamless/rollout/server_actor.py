"""A vLLM server as a Ray actor: the actor owns the server process and dies with it.

The actor is what Ray places on a rollout resource (its lease's bundle, so it sees that GPU as
CUDA_VISIBLE_DEVICES). Control traffic (pause, reload, metrics) goes to the server over HTTP,
not through the actor, so a busy actor never delays a weight update.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from seamless.rollout import die_with_parent
from seamless.services.network import NODE
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions


class _GuardedServer(VLLMServer):
    """A VLLMServer that the kernel kills when the actor process dies (see die_with_parent)."""

    def argv(self) -> list[str]:
        # run as a script path: the server's cwd is its work folder, where `-m seamless...` may
        # resolve to another checkout (or none)
        return [sys.executable, die_with_parent.__file__, str(os.getpid()), *super().argv()]


class ServerActor:
    """Ray actor body; created by the fleet as `ray.remote(ServerActor).options(...)`."""

    def __init__(self) -> None:
        self._server: VLLMServer | None = None

    def start(self, model_dir: str, work_dir: str, options: VLLMServerOptions) -> tuple[str, int]:
        """Start the server and block until it is healthy; returns (url, pid of its process group).
        A server bound to "node" listens on the address Ray reports for this node, and the URL it
        returns (the one the proxy routes to) names that address."""
        if options.host == NODE:
            import ray

            options = replace(options, host=ray.util.get_node_ip_address())
        self._server = _GuardedServer(model_dir, Path(work_dir), options).start()
        return self._server.url, self._server.pid

    def sleeps(self) -> bool:
        """Whether the server runs with vLLM's sleep mode (a GPU it shares with a trainer rank)."""
        return self._server is not None and self._server.on_gpu and self._server.options.enable_sleep_mode

    def weight_transfer(self) -> str:
        """How the trainer's weights reach this server: vLLM's `ipc` or `nccl` engine (GPUs), else `disk`."""
        server = self._server
        return (server.options.weight_transfer or "disk") if server is not None and server.on_gpu else "disk"

    def device_report(self) -> dict:
        """The devices this actor (and so its server process) sees (tests, `seamless doctor`)."""
        from seamless.cluster.devices import device_report

        return device_report()

    def alive(self) -> bool:
        return self._server is not None and self._server.exit_code() is None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
