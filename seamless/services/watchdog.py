"""Stop a service's processes once the process that started them is gone, even after SIGKILL.

    python -I -S watchdog.py FD GRACE_S TARGET...

TARGET is `-PGID` (a whole process group) or `PID@START` (one process, START being its start
time in /proc/PID/stat, so that a reused id is never signalled). FD is the read end of a pipe
whose only write end the owner (the process that started the targets) holds. An owner that stops
its targets itself writes one byte first: the watchdog then leaves without touching them. The
kernel closes the write end however the owner ends (exit, crash, `kill -9`), and a read returns
end-of-file without that byte: then every target gets SIGTERM (Redis writes its append-only file and exits, uvicorn and vLLM shut
down, vLLM's engine process included), and SIGKILL if still there after GRACE_S seconds.

Why not only PR_SET_PDEATHSIG in the service: it fires when the *thread* that started the child
ends (a service started from a worker thread would die with that thread), it signals the leader
alone (vLLM's engine process, in the same group, stayed behind), and it cannot escalate from a
polite signal to SIGKILL. A pipe belongs to the process, not a thread, and this watchdog stops
the whole group.

It detaches at once (forks, and the parent exits): a Ray worker that notices its raylet died
SIGKILLs its *direct* children before it exits, which took the vLLM server and its first
watchdog with it and left vLLM's engine process running (measured); a grandchild is spared.

Stdlib only, started with -I -S: it costs a few MB and a few ms. It leaves on its own once no
target runs any more (the service ended and was reaped), so it never signals a reused id.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], parent pid [1], pgrp [2],
    start time [19]); None once the process is gone. Also used by services.process and
    services.redis_server (this file stays stdlib-only: it runs as `python -I -S watchdog.py`)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the id is someone else's group now
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        fields = proc_stat(int(entry)) if entry.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _process_alive(pid: int, start: str) -> bool:
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == start


def _alive(target: str) -> bool:
    if target.startswith("-"):
        return _group_alive(int(target[1:]))
    pid, start = target.split("@")
    return _process_alive(int(pid), start)


def _signal(target: str, sig: signal.Signals) -> None:
    try:
        if target.startswith("-"):
            os.killpg(int(target[1:]), sig)
        elif _alive(target):
            os.kill(int(target.split("@")[0]), sig)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    fd, grace_s, targets = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    owner = os.getppid()
    if os.fork() > 0:  # detach: the owner reaps this parent at once, the child watches
        os._exit(0)
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not any(_alive(t) for t in targets):
            return  # they all ended (and were reaped): nothing left to guard
        if ready:
            if os.read(fd, 1):
                return  # the owner stops them itself
            break  # end-of-file: the owner is gone
    print(f"seamless watchdog: the process that started {' '.join(targets)} (pid {owner}) is gone; "
          "stopping them", file=sys.stderr, flush=True)
    for target in targets:
        _signal(target, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(t) for t in targets):
        time.sleep(0.05)
    for target in targets:
        if _alive(target):
            _signal(target, signal.SIGKILL)


if __name__ == "__main__":
    main()
