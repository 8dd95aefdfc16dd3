import sys
import time

import pytest

from seamless.errors import ServiceError
from seamless.services.process import ManagedProcess


def test_a_crash_while_starting_reports_the_log_tail(tmp_path):
    proc = ManagedProcess("crasher", [sys.executable, "-c", "print('bad flag --x'); raise SystemExit(3)"],
                          tmp_path / "crash.log")
    proc.start()
    with pytest.raises(ServiceError) as err:
        proc.wait_until(lambda: False, timeout_s=30)
    assert "exited with code 3 while starting" in str(err.value)
    assert "bad flag --x" in str(err.value)


def test_a_service_that_never_gets_ready_is_stopped_with_its_log(tmp_path):
    proc = ManagedProcess("sleeper", [sys.executable, "-c", "print('waiting', flush=True); import time; time.sleep(60)"],
                          tmp_path / "sleep.log")
    proc.start()
    with pytest.raises(ServiceError, match="not ready after 1 s") as err:
        proc.wait_until(lambda: False, timeout_s=1)
    assert "waiting" in str(err.value)
    assert proc.exit_code() is not None


def test_stop_ends_the_children_too(tmp_path):
    # the child spawns a grandchild that ignores SIGTERM; stop() must still end both
    script = ("import subprocess, sys, time;"
              "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(\\'ready\\', flush=True); time.sleep(60)']);"
              "print('grandchild', p.pid, flush=True); time.sleep(60)")
    log = tmp_path / "tree.log"
    proc = ManagedProcess("tree", [sys.executable, "-c", script], log)
    proc.start()
    proc.wait_until(lambda: "ready" in log.read_text() and "grandchild" in log.read_text(),
                    timeout_s=30, poll_s=0.02)
    words = log.read_text().split()
    grandchild = int(words[words.index("grandchild") + 1])
    proc.stop(grace_s=1)
    assert _gone_within(grandchild, seconds=5)


def _gone_within(pid: int, seconds: float) -> bool:
    """True once `pid` no longer exists or is a zombie waiting for init to reap it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def test_a_service_dies_with_its_owner_even_after_sigkill(tmp_path):
    # the owner starts a service whose child is a grandchild in the same group, then is SIGKILLed:
    # no atexit hook runs, and only the watchdog can stop both
    import os
    import signal
    import subprocess

    log = tmp_path / "svc.log"
    service = ("import subprocess, sys, time;"
               "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
               "print('grandchild', p.pid, flush=True); time.sleep(60)")
    owner = ("import sys, time; from pathlib import Path; from seamless.services.process import ManagedProcess;"
             f"p = ManagedProcess('svc', [sys.executable, '-c', {service!r}], Path({str(log)!r})); p.start();"
             "print(p.pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    service_pid = int(proc.stdout.readline())
    deadline = time.monotonic() + 30
    while "grandchild" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    words = log.read_text().split()
    grandchild = int(words[words.index("grandchild") + 1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone_within(service_pid, seconds=5) and _gone_within(grandchild, seconds=5)
    assert "is gone; stopping them" in log.read_text()
