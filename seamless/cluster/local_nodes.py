"""Several Ray nodes on one machine, each on its own loopback address: the multi-node path, tested
where there is one machine.

The head is 127.0.0.1 (the driver's node: proxy, Redis, agents); node k is 127.0.0.(k+1), standing
for a node's network address, with its own raylet, logical GPUs, labels and custom resources.
Code that asks Ray where it runs (`ray.util.get_node_ip_address()`) gets that address, so a
service bound to "its node" binds it and registers it, exactly as on a real cluster, while every
byte stays on this machine. A node can be removed (its raylet killed, as when a machine dies) and
added again mid-run. Ray's token authentication is on, as on a real cluster (`require_token_auth`):
the nodes' raylets and workers listen on every interface, and answer nothing without the token.

Built on Ray's own test cluster (`ray.cluster_utils.Cluster`, a DeveloperAPI of Ray 2.60).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from seamless.services.process import Watchdog, process_target


@dataclass(frozen=True)
class LocalNode:
    """One raylet of the local cluster."""

    ip: str
    node: Any
    """Ray's handle (`ray._private.node.Node`), for removal."""

    @property
    def node_id(self) -> str:
        return self.node.node_id


class LocalNodes:
    """A head on 127.0.0.1 plus nodes on 127.0.0.2, 127.0.0.3, ...; `address` is what
    `cluster.address` (or `ray.init(address=...)`) joins. Stop it with `shutdown()`."""

    def __init__(self, head_cpus: int = 1, head_resources: dict[str, float] | None = None) -> None:
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        from seamless.cluster.ray_cluster import require_token_auth

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        require_token_auth()
        # loopback-only head (see ray_cluster.py); the nodes bind their own 127.x addresses
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        # Ray's unix sockets live under the temp dir (path limit 107 bytes): a short one
        self.temp_dir = Path(tempfile.mkdtemp(prefix="seamless-nodes-"))
        (self.temp_dir / "ray").mkdir()
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        # the head writes the cluster's address into $RAY_TMPDIR/ray: ours, not the machine's /tmp/ray
        previous = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = str(self.temp_dir)
        try:
            self._cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args=dict(
                num_cpus=head_cpus, num_gpus=0, node_ip_address="127.0.0.1", include_dashboard=False,
                temp_dir=str(self.temp_dir), resources=head_resources or {}))
        finally:
            if previous is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = previous
        self.nodes: list[LocalNode] = []
        self._next = 2
        self._before = before
        self._watchdogs: list[Watchdog] = []
        self._guard_new_processes()

    @property
    def address(self) -> str:
        return self._cluster.address

    def add(self, gpus: int, labels: dict[str, str] | None = None, resources: dict[str, float] | None = None,
            cpus: int = 1, wait: bool = True) -> LocalNode:
        """Start a node on the next loopback address with `gpus` logical GPUs. From a thread other
        than the main one, keep that thread alive while the node should live: Ray starts the node's
        processes with PR_SET_PDEATHSIG, which Linux fires when the creating thread ends."""
        import ray._private.utils as ray_utils

        ip = f"127.0.0.{self._next}"
        self._next += 1
        # a node added mid-run comes from another thread than the run's; Ray's node object installs a
        # SIGTERM handler, which only the main thread may do (and the run keeps its own there)
        setter = ray_utils.set_sigterm_handler
        if threading.current_thread() is not threading.main_thread():
            ray_utils.set_sigterm_handler = lambda handler: None
        try:
            node = self._cluster.add_node(wait=wait, num_cpus=cpus, num_gpus=gpus, node_ip_address=ip,
                                          labels=labels or {}, resources=resources or {})
        finally:
            ray_utils.set_sigterm_handler = setter
        local = LocalNode(ip, node)
        self.nodes.append(local)
        self._guard_new_processes()
        return local

    def remove(self, node: LocalNode) -> None:
        """Kill the node's raylet and everything on it, as when its machine dies."""
        self._cluster.remove_node(node.node, allow_graceful=False)
        self.nodes.remove(node)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._cluster.shutdown()
        for watchdog in self._watchdogs:
            watchdog.stop()
        self._watchdogs.clear()

    def _guard_new_processes(self) -> None:
        """Ray's node processes stop when this process dies, even by SIGKILL (services/watchdog.py)."""
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in self._before]
        self._before |= {p.pid for p in started}
        targets = [t for t in (process_target(p.pid) for p in started) if t]
        if targets:
            log = self.temp_dir / f"seamless-watchdog-{len(self._watchdogs)}.log"
            self._watchdogs.append(Watchdog(targets, log, grace_s=2.0))

    def __enter__(self) -> LocalNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
