"""A long-lived agent process in a venv of its own, shared by all episodes of this Python process.

Frameworks whose pins or module names clash with seamless's (the openai-agents SDK's module is
named `agents`; verifiers pulls that SDK in) run in their own venv. Starting one costs seconds of
imports, so it runs once per run: episodes go to its stdin as JSON lines (each with an `id`) and
its replies come back on stdout matched by that id: `{"id", "error"}` fails the episode, any
other reply is the episode's result. A worker may first write one line describing itself
(`handshake=True`): `{"error": ...}` there means it could not start.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from seamless.agent.specs import AgentFailed

REPO = Path(__file__).resolve().parents[1]


def venv_python(env_var: str, name: str) -> Path | None:
    """The python of the venv `name` (`$env_var`, else .venv/<name> beside seamless's venv or in the
    repository); None when there is none."""
    if os.environ.get(env_var):
        candidates = [Path(os.environ[env_var])]
    else:
        candidates = [Path(sys.prefix) / name / "bin" / "python", REPO / ".venv" / name / "bin" / "python"]
    return next((python for python in candidates if python.exists()), None)


class VenvWorker:
    """The worker process: `submit(request)` gives a future of its reply."""

    def __init__(self, argv: list[str], name: str, handshake: bool = False) -> None:
        self.name = name
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on its path
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        bufsize=1, env=env)
        self.hello: dict = {}
        if handshake:
            line = self.process.stdout.readline()
            self.hello = json.loads(line) if line.strip() else {"error": f"exited ({self.process.wait()})"}
            if "error" in self.hello:
                self.close()
                raise AgentFailed(f"the {name} worker did not start: {self.hello['error']}")
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, name=f"{name}-worker", daemon=True).start()

    def submit(self, request: dict) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            request_id = next(self.ids)
            self.pending[request_id] = future
            self.process.stdin.write(json.dumps({**request, "id": request_id}) + "\n")
            self.process.stdin.flush()
        return future

    def _read(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self.lock:
                future = self.pending.pop(reply["id"], None)
            if future is None or future.done():  # its episode was cancelled (timeout)
                continue
            if "error" in reply:
                future.set_exception(AgentFailed(f"{self.name} episode failed: {reply['error']}"))
            else:
                future.set_result(reply)
        with self.lock:  # the process ended: nothing pending will be answered
            pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(AgentFailed(f"the {self.name} worker exited ({self.process.poll()})"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


_workers: dict[tuple[str, ...], VenvWorker] = {}
_workers_lock = threading.Lock()


def running_worker(argv: list[str], name: str, handshake: bool = False) -> VenvWorker:
    """The worker started with `argv`, started now if it is not running (blocks for its start-up)."""
    key = tuple(argv)
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None or worker.process.poll() is not None:
            worker = _workers[key] = VenvWorker(argv, name, handshake)
            atexit.register(worker.close)
        return worker
