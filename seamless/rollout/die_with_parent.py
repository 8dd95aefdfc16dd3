"""Exec a command that the kernel kills when its parent (a Ray actor) dies.

A vLLM server runs in its own process group (so it can be stopped whole), which also means it
outlives an actor that Ray kills with SIGKILL: no atexit hook runs then. PR_SET_PDEATHSIG survives
exec, so the server itself gets SIGKILL the moment the actor process is gone.

    python -m seamless.rollout.die_with_parent PARENT_PID COMMAND...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
