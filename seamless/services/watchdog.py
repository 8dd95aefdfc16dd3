"""Stop a service's process group once the process that started it is gone, even after SIGKILL.

    python -I -S watchdog.py FD PGID GRACE_S

FD is the read end of a pipe whose only write end the owner (the process that started the
service) holds. The kernel closes that end however the owner ends (exit, crash, `kill -9`), and
the read returns end-of-file: then the whole process group PGID gets SIGTERM (Redis writes its
append-only file and exits, uvicorn and vLLM shut down, vLLM's engine process included), and
SIGKILL whatever is left after GRACE_S seconds.

Why not only PR_SET_PDEATHSIG in the service: it fires when the *thread* that started the child
ends (a service started from a worker thread would die with that thread), it signals the leader
alone (vLLM's engine process, in the same group, stayed behind), and it cannot escalate from a
polite signal to SIGKILL. A pipe belongs to the process, not a thread, and this watchdog stops
the whole group.

Stdlib only, started with -I -S: it costs a few MB and a few ms. It leaves on its own once the
group is gone (the service ended and was reaped), so it never signals a reused id for long.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the id is someone else's group now
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def main() -> None:
    fd, pgid, grace_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    owner = os.getppid()
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not _group_alive(pgid):
            return  # the service ended and its owner reaped it: nothing left to guard
        if ready and not os.read(fd, 1):
            break  # end-of-file: the owner is gone
    print(f"seamless watchdog: the process that started this service (pid {owner}) is gone; "
          f"stopping its process group {pgid}", file=sys.stderr, flush=True)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
