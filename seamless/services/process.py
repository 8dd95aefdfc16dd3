"""A child process seamless owns: started in its own process group, logged to a file, stopped whole.

Services (Redis, vLLM, the proxy) are started through `ManagedProcess` so that:
- a crash while starting is reported with the tail of the service's log, never a hang;
- stopping ends the service and every process it spawned (the whole process group), by PID;
- a service still running when the Python process exits is stopped by an atexit hook;
- a service never outlives the process that started it, even one ended by SIGKILL (no atexit
  hook runs then): a small watchdog (services/watchdog.py) stops its process group.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from seamless.errors import ServiceError
from seamless.services.http import control_client
from seamless.services.watchdog import proc_stat

LOG_TAIL_LINES = 40
_WATCHDOG = str(Path(__file__).with_name("watchdog.py"))

_running: set[ManagedProcess] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """True when GET `url` answers 200 (a service's health route); False while it cannot connect."""
    try:
        return control_client().get(url, timeout=timeout_s, headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note that it is empty/missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


class ManagedProcess:
    """One service process, its log file and its lifecycle."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, f"{self.name} was never started"
        return self._popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # a new session makes the service the leader of its own process group, so stop() can
            # signal it and all its children at once, and a Ctrl-C in our terminal reaches us first
            self._popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                           start_new_session=True)
        _running.add(self)
        # the whole group: vLLM's engine process is a child of the server, in its group
        self._watchdog = Watchdog([f"-{self.pid}"], self.log_path)

    def exit_code(self) -> int | None:
        """None while running; the exit code once it ended."""
        return None if self._popen is None else self._popen.poll()

    def crash_report(self, what: str) -> ServiceError:
        return ServiceError(f"{self.name} {what}. Last lines of its log {self.log_path}:\n"
                            f"{log_tail(self.log_path)}")

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> None:
        """Block until `ready()` is true; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.exit_code()
            if code is not None:
                raise self.crash_report(f"exited with code {code} while starting")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self.crash_report(f"was not ready after {timeout_s:.0f} s and was stopped")
            time.sleep(poll_s)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `grace_s`."""
        if self._popen is None:
            return
        _running.discard(self)
        self._stop_watchdog()  # first, so that it never races this stop
        pgid = self._popen.pid  # leader of its own session, so its pgid is its pid
        if self._popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # children may outlive a leader that exited; they are still in its group
        _signal_group(pgid, signal.SIGKILL)
        try:
            self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{self.name} (pid {pgid}) did not stop after SIGKILL") from exc

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None


class Watchdog:
    """A process that stops `targets` once this process is gone, however it ends (watchdog.py).

    `targets` are `-PGID` (a process group) or `PID@START` (see `process_target`). Both ends of
    its pipe are close-on-exec, so no other child ever holds the write end; the watchdog gets
    the read end only. It runs detached, in a session of its own, so a signal to our process
    group (a terminal's Ctrl-C, `kill -9 -PGID`) or to our children leaves it there to clean up."""

    def __init__(self, targets: list[str], log_path: Path, grace_s: float = 10.0):
        read_end, self._lifeline = os.pipe()
        try:
            with open(log_path, "ab") as log:
                launcher = subprocess.Popen(
                    [sys.executable, "-I", "-S", _WATCHDOG, str(read_end), str(grace_s), *targets],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(read_end,),
                    start_new_session=True)
            launcher.wait()  # it forks the watchdog and exits at once
        finally:
            os.close(read_end)

    def stop(self) -> None:
        """Send the watchdog away without it touching its targets (their owner stops them itself)."""
        if self._lifeline is not None:
            try:
                os.write(self._lifeline, b"q")
            except BrokenPipeError:  # it left already (its targets ended)
                pass
            os.close(self._lifeline)
            self._lifeline = None


def process_target(pid: int) -> str | None:
    """`PID@START` for a running process (START from /proc/PID/stat guards against a reused id)."""
    fields = proc_stat(pid)
    return f"{pid}@{fields[19]}" if fields and len(fields) > 19 else None


def dead_services() -> list[ServiceError]:
    """A report for each service this process started and did not stop that is no longer running."""
    return [proc.crash_report(f"exited with code {code} while it was still needed")
            for proc in sorted(_running, key=lambda p: p.name) if (code := proc.exit_code()) is not None]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@atexit.register
def _stop_all() -> None:
    for proc in list(_running):
        proc.stop(grace_s=5.0)
