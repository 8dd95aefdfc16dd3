"""Running the proxy: `seamless proxy` in the foreground, or `ProxyProcess` as a managed service.

`seamless run` and the tests start the proxy as its own process, so it is the same service a
user runs alone, and the rest of seamless talks to it only over HTTP.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from seamless.config import ProxyConfig
from seamless.errors import ConfigError
from seamless.proxy.state import SETTINGS_ENV, ProxySettings, new_key
from seamless.services.network import is_loopback, redacted, store_url_problem, url_host
from seamless.services.process import ManagedProcess, free_port, http_ok
from seamless.traces.keys import Keys


STORE_URL_ENV = "SEAMLESS_REDIS_URL"
"""The store's URL when `--redis` is not given: a password in it stays out of the process list."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The wiring of one proxy (its upstreams, store, key prefix), then a flag per `ProxyConfig` key."""
    parser.add_argument("--upstream", action="append", default=[], metavar="URL",
                        help="vLLM server base URL (repeatable); more can be added at run time with "
                             "POST /admin/upstreams")
    parser.add_argument("--redis", metavar="URL", help=f"redis:// or unix:// URL (or ${STORE_URL_ENV}, which "
                                                       "keeps a password out of the process list); default: "
                                                       "start a private Redis in the run folder")
    parser.add_argument("--prefix", default="seamless", help="Redis key prefix of this run")
    parser.add_argument("--run-dir", help="folder for the private Redis (default runs/proxy-<time>)")
    parser.add_argument("--fresh", action="store_true",
                        help="start with an empty pool, unpaused: drop the upstreams and the pause gate a "
                             "previous proxy of this prefix left in Redis (a new or resumed run; the weight "
                             "version stays, runs publish above it). Without it a restarted proxy carries on "
                             "with its predecessor's upstreams, pause gate and weight version")
    for name, field in ProxyConfig.model_fields.items():
        help_text = f"{field.description} (default: {field.default})"
        if field.annotation in (bool, "bool"):
            parser.add_argument(_flag(name), dest=name, action="store_true", default=None, help=help_text)
        else:  # parsed and checked by ProxyConfig, so a flag and a recipe key fail alike
            parser.add_argument(_flag(name), dest=name, metavar=name.upper(), help=help_text)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_of(args: argparse.Namespace) -> ProxyConfig:
    """The `ProxyConfig` the flags describe (unset flags keep its defaults)."""
    given = {name: getattr(args, name) for name in ProxyConfig.model_fields if getattr(args, name) is not None}
    given.setdefault("admin_key", os.environ.get("SEAMLESS_ADMIN_KEY") or None)
    try:
        return ProxyConfig(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{_flag(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"seamless proxy: {problems}") from None


def argv_of(config: ProxyConfig) -> list[str]:
    """The flags that give `seamless proxy` this config (only what differs from the defaults; the
    KEY=VALUE form, because a generated key may start with "-", which argparse would take for a flag)."""
    args = []
    for name, value in config.model_dump(exclude_defaults=True).items():
        if isinstance(value, bool):
            args += [_flag(name)] if value else []
        else:
            args.append(f"{_flag(name)}={value}")
    return args


def run_from_args(args: argparse.Namespace) -> int:
    """Serve in the foreground until interrupted."""
    import uvicorn

    from seamless.proxy.app import create_app
    from seamless.proxy.http_protocol import HeaderDeadlineProtocol
    from seamless.services.redis_server import RedisServer

    config = config_of(args)
    port = config.port or free_port(config.host)
    redis_server = None
    store_url = args.redis or os.environ.get(STORE_URL_ENV) or None
    if store_url is None:
        run_dir = Path(args.run_dir or f"runs/proxy-{time.strftime('%Y%m%d-%H%M%S')}")
        redis_server = RedisServer(run_dir / "redis").start()
        store_url = redis_server.url
    elif not store_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--redis {redacted(store_url)!r} is not a Redis URL; use redis://HOST:PORT/DB or unix:///path")
    elif problem := store_url_problem(store_url):
        raise ConfigError(f"--redis {redacted(store_url)}: {problem}")
    # every route but /health needs a key: the admin key (generated when unset) or a session's
    admin_key = config.admin_key or new_key()
    if not config.admin_key:
        print(f"seamless proxy: admin key (generated): {admin_key}", flush=True)
    if not is_loopback(config.host):
        print(f"seamless proxy: listening on {config.host}, beyond loopback: every route but /health "
              "needs the admin key or a session's key", file=sys.stderr, flush=True)
    settings = ProxySettings(**config.model_dump() | dict(port=port, admin_key=admin_key), store_url=store_url,
                             key_prefix=args.prefix, upstreams=tuple(args.upstream))
    print(f"seamless proxy: serving on http://{url_host(config.host)}:{port} (store {redacted(store_url)})", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _previous_proxy(store_url, args.prefix, forget=args.fresh)
    # keep idle connections far longer than clients do (httpx drops its own after 5 s): a server
    # closing one just as a client reuses it fails that request with a ReadError (seen once in a
    # 40-step benchmark, on POST /finish after a training step)
    serve = dict(host=config.host, port=port, log_level="warning", access_log=False, loop="uvloop",
                 http=HeaderDeadlineProtocol, timeout_graceful_shutdown=5, timeout_keep_alive=120)
    try:
        if config.workers == 1:
            uvicorn.run(create_app(settings), **serve)
        else:  # uvicorn starts (and restarts) the workers; each builds the app from the settings
            os.environ[SETTINGS_ENV] = settings.model_dump_json()
            uvicorn.run("seamless.proxy.app:app_from_environment", factory=True, workers=config.workers, **serve)
    finally:
        if redis_server is not None:
            redis_server.stop()
    return 0


def _previous_proxy(store_url: str, prefix: str, forget: bool) -> None:
    """What a previous proxy of this prefix left in Redis: its counters always go (they were its
    workers'); its upstreams and pause gate go with `--fresh` (a new or resumed run). The weight
    version always stays: a resumed run publishes above it, so no version ever names two sets of
    weights. Without `--fresh` the workers read all of it on start (`ControlBus.listen`), so a proxy
    killed and restarted stamps the version the trainer last published, and one killed during a
    weight update stays paused until the trainer resumes it, instead of serving old weights."""
    import redis

    keys = Keys(prefix).proxy
    with redis.Redis.from_url(store_url) as client:
        version = client.hget(keys.state, "version")
        client.delete(keys.metrics, *((keys.state, keys.upstreams) if forget else ()))
        if forget and version is not None:
            client.hset(keys.state, "version", version)
        state = {k.decode(): v.decode() for k, v in client.hgetall(keys.state).items()}
    if state and not forget:
        print(f"seamless proxy: carrying on from the previous proxy of prefix {prefix!r}: weight version "
              f"{state.get('version', 0)}, {'paused' if state.get('paused') == '1' else 'not paused'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seamless proxy", description="Run the trajectory manager.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


class ProxyProcess:
    """The proxy as a child process; `start()` returns once /health answers. `config` is the
    recipe's `proxy` section (its port 0 and unset admin key are chosen here, so the caller knows
    both); `extra_args` are more `seamless proxy` flags. It starts `--fresh` (a new run's pool);
    `restart()` starts it again on the same port and key, carrying on from the shared state."""

    def __init__(self, store_url: str, work_dir: str | Path, upstreams: list[str] = (),
                 prefix: str = "seamless", config: ProxyConfig = ProxyConfig(), extra_args: list[str] = ()):
        self.config = config.model_copy(update={"admin_key": config.admin_key or new_key(),
                                                "port": config.port or free_port(url_host(config.host))})
        self.admin_key, self.port = self.config.admin_key, self.config.port
        self.work_dir = Path(work_dir)
        # the keys (admin key, a Redis password in the URL) go in the environment: other users of
        # the machine can read every process's command line
        argv = [sys.executable, "-m", "seamless.proxy", f"--prefix={prefix}",
                *argv_of(self.config.model_copy(update={"admin_key": None})), *extra_args]
        argv += [f"--upstream={url}" for url in upstreams]
        self._env = {**os.environ, "SEAMLESS_ADMIN_KEY": self.admin_key, STORE_URL_ENV: store_url}
        self._process = ManagedProcess(f"seamless proxy ({self.url})", [*argv, "--fresh"], self.work_dir / "proxy.log",
                                       env=self._env)
        self._argv = argv

    @property
    def url(self) -> str:
        return f"http://{url_host(self.config.host)}:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self, timeout_s: float = 60.0) -> ProxyProcess:
        self._process.start()
        self._process.wait_until(lambda: http_ok(f"{self.url}/health"), timeout_s, poll_s=0.05)
        return self

    def restart(self, timeout_s: float = 60.0) -> ProxyProcess:
        """Stop the proxy if it still runs, then start it again without `--fresh`."""
        self._process.stop()
        self._process = ManagedProcess(self._process.name, self._argv, self._process.log_path, env=self._env)
        return self.start(timeout_s)

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
