"""Running the proxy: `seamless proxy` in the foreground, or `ProxyProcess` as a managed service.

`seamless run` and the tests start the proxy as its own process, so it is the same service a
user runs alone, and the rest of seamless talks to it only over HTTP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path


from seamless.config import ProxyConfig
from seamless.errors import ConfigError
from seamless.proxy.control import ControlKeys
from seamless.proxy.state import SETTINGS_ENV, ProxySettings, new_key
from seamless.services.process import ManagedProcess, free_port, http_ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", action="append", default=[], metavar="URL",
                        help="vLLM server base URL (repeatable); more can be added at run time with "
                             "POST /admin/upstreams")
    parser.add_argument("--redis", metavar="URL", help="redis:// or unix:// URL; default: start a "
                                                       "private Redis in the run folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port (0 picks a free one)")
    parser.add_argument("--admin-key", default=os.environ.get("SEAMLESS_ADMIN_KEY"),
                        help="key for admin routes (default: $SEAMLESS_ADMIN_KEY, else generated)")
    parser.add_argument("--prefix", default="seamless", help="Redis key prefix of this run")
    parser.add_argument("--run-dir", help="folder for the private Redis (default runs/proxy-<time>)")
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--health-interval", type=float, default=2.0, help="seconds between health checks")
    parser.add_argument("--upstream-timeout", type=float, default=600.0,
                        help="longest an upstream call may take, in seconds")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes serving the port (more requests/s; admin changes reach all)")
    parser.add_argument("--max-n", type=int, default=64,
                        help="most choices one call may ask for (n x prompts); each is generated and recorded")
    parser.add_argument("--store-timeout", type=float, default=10.0,
                        help="seconds a call's record may take before the call is dropped with a 503")
    parser.add_argument("--token-in-token-out", action="store_true",
                        help="build each continuing chat call's prompt from the recorded token ids plus "
                             "the new messages, so multi-turn agents never see re-tokenization drift")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve in the foreground until interrupted."""
    import uvicorn

    from seamless.proxy.app import create_app
    from seamless.proxy.http_protocol import HeaderDeadlineProtocol
    from seamless.services.redis_server import RedisServer

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"seamless proxy: warning: binding {args.host} exposes the proxy beyond this machine",
              file=sys.stderr)
    port = args.port or free_port(args.host)
    redis_server = None
    store_url = args.redis
    if store_url is None:
        run_dir = Path(args.run_dir or f"runs/proxy-{time.strftime('%Y%m%d-%H%M%S')}")
        redis_server = RedisServer(run_dir / "redis").start()
        store_url = redis_server.url
    elif not store_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--redis {store_url!r} is not a Redis URL; use redis://HOST:PORT/DB or unix:///path")
    admin_key = args.admin_key or new_key()
    if not args.admin_key:
        print(f"seamless proxy: admin key (generated): {admin_key}", flush=True)
    settings = ProxySettings(store_url=store_url, key_prefix=args.prefix, admin_key=admin_key,
                             upstreams=tuple(args.upstream), max_body_bytes=args.max_body_bytes,
                             health_interval_s=args.health_interval,
                             upstream_timeout_s=args.upstream_timeout,
                             token_in_token_out=args.token_in_token_out, workers=args.workers,
                             max_n=args.max_n, store_timeout_s=args.store_timeout)
    print(f"seamless proxy: serving on http://{args.host}:{port} (store {store_url})", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    _forget_previous_proxy(store_url, args.prefix)
    # keep idle connections far longer than clients do (httpx drops its own after 5 s): a server
    # closing one just as a client reuses it fails that request with a ReadError (seen once in a
    # 40-step benchmark, on POST /finish after a training step)
    serve = dict(host=args.host, port=port, log_level="warning", access_log=False, loop="uvloop",
                 http=HeaderDeadlineProtocol, timeout_graceful_shutdown=5, timeout_keep_alive=120)
    try:
        if args.workers == 1:
            uvicorn.run(create_app(settings), **serve)
        else:  # uvicorn starts (and restarts) the workers; each builds the app from the settings
            os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
            uvicorn.run("seamless.proxy.app:app_from_environment", factory=True, workers=args.workers, **serve)
    finally:
        if redis_server is not None:
            redis_server.stop()
    return 0


def _forget_previous_proxy(store_url: str, prefix: str) -> None:
    """A proxy starts with an empty pool: drop the upstreams, gate and counters that a previous
    proxy of this prefix left in Redis (a worker that restarts keeps them)."""
    import redis

    keys = ControlKeys(prefix)
    with redis.Redis.from_url(store_url) as client:
        client.delete(keys.state, keys.upstreams, keys.metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seamless proxy", description="Run the trajectory manager.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


class ProxyProcess:
    """The proxy as a child process on 127.0.0.1; `start()` returns once /health answers."""

    def __init__(self, store_url: str, work_dir: str | Path, upstreams: list[str] = (),
                 prefix: str = "seamless", admin_key: str | None = None, port: int | None = None,
                 extra_args: list[str] = ()):
        self.admin_key = admin_key or new_key()
        self.port = port or free_port()
        self.work_dir = Path(work_dir)
        # KEY=VALUE form: a generated key may start with "-", which argparse would take for a flag
        argv = [sys.executable, "-m", "seamless.proxy", f"--port={self.port}", f"--redis={store_url}",
                f"--prefix={prefix}", f"--admin-key={self.admin_key}", *extra_args]
        argv += [f"--upstream={url}" for url in upstreams]
        self._process = ManagedProcess(f"seamless proxy ({self.url})", argv, self.work_dir / "proxy.log")

    @staticmethod
    def args_of(config: ProxyConfig) -> list[str]:
        """Command-line flags carrying a recipe's `proxy` section to the proxy process."""
        args = ["--max-body-bytes", str(config.max_body_bytes), "--upstream-timeout", repr(config.upstream_timeout_s)]
        return args + (["--token-in-token-out"] if config.token_in_token_out else [])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self, timeout_s: float = 60.0) -> ProxyProcess:
        self._process.start()
        self._process.wait_until(lambda: http_ok(f"{self.url}/health"), timeout_s, poll_s=0.05)
        return self

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
