"""`seamless run` on a Ray cluster of several nodes on this machine (seamless.cluster.local_nodes):
a trainer node and rollout nodes, each on its own loopback address (127.0.0.2, 127.0.0.3, ...),
labelled seamless.io/role=train or =rollout. The recipe's cluster.resources select them by label
and its servers bind their node's address (cluster.bind: node), so the run takes the multi-node
path while all traffic stays on this machine. Writes, next to the run, every socket that listens
while the run trains (listening.json) and how each is protected. With --kill-node-at-s (or
--kill-node-at-step) the last rollout node's raylet is killed mid-run and a new rollout node joins
--readd-after-s later; with --elastic the recipe also declares one elastic rollout resource
(cluster.resources.N.elastic, labelled seamless.io/role=spare) that no node offers at start, and a
spare node joins with the new rollout node. At the end the script prints the run's node and server events and the
audit of the trainer's stream (every finished episode trained once, none lost).

  scripts/run_on_local_nodes.py recipes/grpo_tiny_cpu.yaml --rollout-nodes 2 --run-dir runs/nodes3 \\
      trainer.total_steps=20
  scripts/run_on_local_nodes.py recipes/grpo_tiny_cpu.yaml --rollout-nodes 2 --kill-node-at-step 10 \
      --readd-after-s 20 --elastic --run-dir runs/nodes3 trainer.total_steps=40

Run it under `flock /tmp/seamless-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

ROLE = "seamless.io/role"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--rollout-nodes", type=int, default=2)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--sockets-after-s", type=float, default=90.0,
                        help="when to list the listening sockets (the run should be training by then)")
    parser.add_argument("--sockets-at-step", type=int, help="list them once the run has logged this step instead")
    parser.add_argument("--kill-node-at-s", type=float, help="kill the last rollout node's raylet this long "
                        "after the run starts (as when its machine dies)")
    parser.add_argument("--kill-node-at-step", type=int, help="kill it once the run has logged this step")
    parser.add_argument("--readd-after-s", type=float, default=30.0,
                        help="then add a rollout node (a new address, the same label) this long after")
    parser.add_argument("--elastic", action="store_true", help="declare one elastic rollout resource (label "
                        "role=spare) and add a spare node with the new rollout node")
    args = parser.parse_intermixed_args()  # KEY=VALUE overrides may follow the options

    from seamless.cli import main as seamless_main
    from seamless.cluster.local_nodes import LocalNodes

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = threading.Event()
    with LocalNodes(head_cpus=1) as nodes:
        nodes.add(gpus=1, labels={ROLE: "train"})
        for _ in range(args.rollout_nodes):
            nodes.add(gpus=1, labels={ROLE: "rollout"})
        print(f"nodes: head 127.0.0.1, " + ", ".join(f"{n.ip} ({'train' if i == 0 else 'rollout'})"
                                                    for i, n in enumerate(nodes.nodes)), flush=True)
        spare = f", {{count: 1, tags: [rollout], node_labels: {{{ROLE}: spare}}, elastic: true}}" if args.elastic else ""
        resources = (f"[{{count: 1, tags: [train], node_labels: {{{ROLE}: train}}}}, "
                     f"{{count: {args.rollout_nodes}, tags: [rollout], node_labels: {{{ROLE}: rollout}}}}{spare}]")
        overrides = [f"cluster.address={nodes.address}", "cluster.bind=node", "cluster.policy=disaggregated",
                     f"cluster.resources={resources}", *args.overrides]
        if args.sockets_at_step is not None:
            snapshot = threading.Thread(target=_when, daemon=True, args=(
                lambda: _logged_step(run_dir) >= args.sockets_at_step, finished, _write_listening,
                run_dir / "listening.json"))
        else:
            snapshot = threading.Timer(args.sockets_after_s, _write_listening, (run_dir / "listening.json",))
            snapshot.daemon = True
        snapshot.start()
        if args.kill_node_at_s is not None or args.kill_node_at_step is not None:
            when = (lambda: _logged_step(run_dir) >= args.kill_node_at_step) if args.kill_node_at_step is not None \
                else (lambda deadline=time.monotonic() + args.kill_node_at_s: time.monotonic() >= deadline)
            threading.Thread(target=_kill_and_readd, args=(nodes, when, args.readd_after_s, finished, args.elastic),
                             daemon=True).start()
        started = time.monotonic()
        code = seamless_main(["run", args.recipe, *overrides, "--run-dir", str(run_dir)])
        finished.set()
        if isinstance(snapshot, threading.Timer):
            snapshot.cancel()
        snapshot.join(timeout=120)  # a listing under way finishes writing
        print(f"seamless run exited {code} after {time.monotonic() - started:.0f} s", flush=True)
    _report(run_dir)
    return code


def _when(condition, finished: threading.Event, action, *args) -> None:
    """`action(*args)` once `condition()` holds, unless the run finishes first."""
    while not condition():
        if finished.wait(0.5):
            return
    action(*args)


def _logged_step(run_dir: Path) -> int:
    """The last step in the run's metrics.jsonl (0 before the first)."""
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return 0
    return max([int(r.get("step", 0)) for r in rows if "rollout/reward_mean" in r], default=0)


def _report(run_dir: Path) -> None:
    """The run's node and server events and the audit of its episodes, from summary.json."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    for event in summary.get("fleet_events", []):
        print(f"event: {event}")
    audit = summary.get("episodes", {})
    if audit:
        verdict = "none lost, none trained twice" if audit["ok"] else \
            f"LOST {audit['lost']}, TRAINED TWICE {audit['trained_twice']}"
        print(f"episodes: {audit['finished']} finished, {audit['trained']} trained once, {audit['waiting']} "
              f"waiting in the stream at the end; {verdict}")
    print(f"timeline: {run_dir / 'timeline.png'}")


def _kill_and_readd(nodes, when, readd_after_s: float, finished: threading.Event, spare: bool) -> None:
    while not when():
        time.sleep(0.5)
    victim = nodes.nodes[-1]
    print(f"[{time.strftime('%H:%M:%S')}] killing rollout node {victim.ip}", flush=True)
    nodes.remove(victim)
    time.sleep(readd_after_s)
    node = nodes.add(gpus=1, labels={ROLE: "rollout"})
    print(f"[{time.strftime('%H:%M:%S')}] added rollout node {node.ip}", flush=True)
    if spare:
        node = nodes.add(gpus=1, labels={ROLE: "spare"})
        print(f"[{time.strftime('%H:%M:%S')}] added spare node {node.ip} (the recipe's elastic resource)", flush=True)
    # the node's processes get SIGKILL when the thread that started them ends (Ray sets
    # PR_SET_PDEATHSIG, which Linux ties to the creating thread): this thread lives as long as the run
    finished.wait()


def _write_listening(path: Path) -> None:
    """Every TCP socket that a process of this run (this one and its descendants: Ray's nodes, the
    proxy, Redis, the servers, the trainer ranks) listens on, with the process's name; each one
    beyond 127.0.0.1 called without a key, and what it answered (`refused`: nothing without one)."""
    from seamless.cluster.exposure import answers_without_a_key, reached_at

    me = psutil.Process()
    rows = []
    for process in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline()[:3])[:120]
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    rows.append({"pid": process.pid, "address": conn.laddr.ip, "port": conn.laddr.port,
                                 "process": name})
        except psutil.Error:
            continue
    # a socket on every interface is reached at the trainer node's address (all of them are here)
    beyond = [(row, reached_at(row["address"], row["port"], "127.0.0.2")) for row in rows]
    beyond = [(row, target) for row, target in beyond if target is not None]
    for row, target in beyond:
        row["without_key"] = answers_without_a_key(target) or "refused"
    open_ones = [row for row, _ in beyond if row["without_key"] != "refused"]
    path.write_text(json.dumps(sorted(rows, key=lambda r: (r["address"], r["process"])), indent=1))
    print(f"listening sockets: {path} ({len(rows)}; {len(beyond)} beyond 127.0.0.1, "
          f"{len(open_ones)} of them answer without a key)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
