"""Starting or joining Ray so that a local cluster is reachable only from this machine.

Measured here (Ray 2.60): by default a local Ray binds its GCS, raylets and workers on every
interface; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and node IP 127.0.0.1 every listening socket
is on loopback. On a machine without GPUs, `num_gpus` gives logical GPUs: actors that ask for one
see CUDA_VISIBLE_DEVICES set as on a real node, which is how the tag scheduler is tested on CPU.

When the driver of a local cluster dies by SIGKILL, Ray ends its GCS and raylet with it (they are
started with a parent-death signal) and its workers follow within seconds, but the raylet's
dashboard and runtime-env agents were measured to linger about a minute (they try to report the
raylet's death to the GCS that is gone). A watchdog (services/watchdog.py) stops every process
`ray.init` started as soon as the driver is gone.

Ray's own ports answer only with the cluster's token (`RAY_AUTH_MODE=token`, Ray 2.52+): measured
here, a raylet, an object manager, a worker and the GCS refuse a gRPC call without it
(UNAUTHENTICATED) and the runtime-env agent answers 401. A local `ray.init` turns it on by itself
(Ray 2.59+, the token in ~/.ray/auth_token); nodes started by `ray start` or Ray's test cluster do
not, so `require_token_auth` turns it on for those, and joining a cluster beyond loopback without it
is refused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psutil

from seamless.errors import ConfigError
from seamless.services.process import Watchdog, process_target

# Ray puts unix sockets under its temp dir; sun_path is limited to 107 bytes
_MAX_RAY_TEMP_DIR = 60
_watchdog = None  # of the local cluster this process started


def start_ray(num_gpus: int, num_cpus: int | None = None, temp_dir: str | Path | None = None,
              address: str | None = None, resources: dict[str, float] | None = None,
              env_vars: dict[str, str] | None = None) -> bool:
    """Join the cluster at `address`, or start a local one on 127.0.0.1 with logical GPUs (and the
    custom `resources` the recipe's cluster.resources select by).

    `env_vars` go to every worker of this job (Ray's job-level runtime environment).
    Returns False when this process was already connected to Ray (then the caller did not start
    it and must not shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        ray.init(address=address, log_to_driver=True,
                 runtime_env={"env_vars": dict(env_vars)} if env_vars else None)
        from ray._raylet import AuthenticationMode, get_authentication_mode

        try:
            check_token_auth(ray.get_runtime_context().gcs_address,
                             token_mode=get_authentication_mode() == AuthenticationMode.TOKEN)
        except ConfigError:
            ray.shutdown()
            raise
        return True
    # local-only cluster: bind loopback. Ray reads the variable when it is imported (its Python
    # side) and when its processes start (the GCS and raylets), so set both.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    if temp_dir is None or len(str(temp_dir)) > _MAX_RAY_TEMP_DIR:
        temp_dir = tempfile.mkdtemp(prefix="seamless-ray-")
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=str(temp_dir), log_to_driver=True,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                       **(env_vars or {})}})
    global _watchdog
    started = [process_target(p.pid) for p in psutil.Process().children(recursive=True) if p.pid not in before]
    # a short grace: the agents ignore SIGTERM for about 10 s, and no Ray process keeps data we need
    _watchdog = Watchdog([t for t in started if t], Path(temp_dir) / "seamless-watchdog.log", grace_s=2.0)
    return True


def require_token_auth() -> None:
    """Turn on Ray's token authentication for the Ray processes this process starts from now on
    (and for its own connections), with Ray's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token, generated there when there is none)."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray caches its config per process: refresh it, as Ray's own setup does
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        generate_and_save_token()
        # Ray writes it with the process's umask (world-readable here): the token is a password
        (Path.home() / ".ray" / "auth_token").chmod(0o600)


def check_token_auth(gcs_address: str, token_mode: bool) -> None:
    """A cluster reached beyond loopback must be one whose ports require Ray's token."""
    import ipaddress

    host = gcs_address.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if not loopback and not token_mode:
        raise ConfigError(
            f"cluster.address: the Ray cluster at {gcs_address} runs without token authentication, so "
            "its ports run code for anyone who reaches them. Start every node with RAY_AUTH_MODE=token "
            "and the same token (`ray get-auth-token --generate`, then copy ~/.ray/auth_token to every "
            "node, or set RAY_AUTH_TOKEN), and export RAY_AUTH_MODE=token before `seamless run` "
            "(cluster/README.md, 'What listens, and with which key').")


def stop_ray() -> None:
    import ray

    global _watchdog
    if ray.is_initialized():
        ray.shutdown()
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
