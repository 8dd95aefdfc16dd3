"""Every part of a run, built once before the main loop and torn down in reverse order.

Modes (GRPO or PPO, agent, store, scheduling policy) are decided here, when parts are built, so
the loop itself has no mode flags. The recipe's `cluster` section becomes a `TagScheduler` that
places the vLLM servers and the trainer's ranks on leased (logical) GPUs and switches their roles;
every recipe runs through it (the tiny recipe's one [train, rollout] resource is `colocated`).
Each part that runs as a service (Redis, the proxy, vLLM servers, Ray) is stopped on the way out,
also when building a later part fails, and a failure names the part and its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seamless.agent.runner import AgentRunner
from seamless.agent.specs import check_agent, resolve_warmup
from seamless.config import Recipe, check_gpu_sharing
from seamless.agent.tasks import TaskSet, load_tasks
from seamless.errors import ConfigError, SeamlessError, ServiceError
from seamless.proxy.server import ProxyProcess
from seamless.proxy.state import new_key
from seamless.cluster.node_watch import NodeWatch
from seamless.cluster.ray_cluster import start_ray, stop_ray
from seamless.rollout.fleet import VLLMFleet
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.switch import ColocatedSwitch
from seamless.run.logger import RunLogger
from seamless.scheduler import RayPlacement, ResourcePool, TagScheduler, make_policy
from seamless.scheduler.adapters import FleetOnLeases
from seamless.scheduler.placement import custom_resources, device_needs
from seamless.services.process import dead_services
from seamless.services.network import SERVER_KEY_ENV, is_loopback, redacted, server_key, store_url_problem
from seamless.services.redis_server import RedisServer
from seamless.services.vllm_server import cuda_available
from seamless.traces.episodes import EpisodeQueue
from seamless.trainer.engines import deepspeed_config
from seamless.trainer.trainer import Trainer

log = logging.getLogger("seamless.run")


@dataclass
class Parts:
    recipe: Recipe
    run_dir: Path
    model_dir: Path
    proxy: ProxyProcess
    fleet: VLLMFleet
    trainer: Trainer
    scheduler: TagScheduler
    runner: AgentRunner
    """Runs evaluation episodes (each asyncio.run makes its own event loop)."""
    rollout_runner: AgentRunner
    """Runs training episodes on the background event loop of the main loop."""
    tasks: TaskSet
    episodes: EpisodeQueue
    logger: RunLogger

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def resolve_model_dir(recipe: Recipe, run_dir: Path) -> Path:
    """The recipe's model folder, or the tiny model built into `run_dir/model` (reused if present)."""
    if recipe.model.path:
        return _check_model_path(recipe)
    from seamless.models.tiny import build_tiny_model

    path = run_dir / "model"
    if not (path / "config.json").is_file():
        print(f"seamless run: building the tiny model into {path}", flush=True)
        build_tiny_model(path, recipe.model.tiny)
    return path


def check_recipe(recipe: Recipe, files: bool = True) -> None:
    """The checks that span sections or need code beyond the config (the agent, the scheduling
    policy, the DeepSpeed section), run before any service starts: a recipe that cannot run fails
    in a second, naming the key to change. `files`: also what the recipe points at on this
    machine (model.path)."""
    check_agent(recipe.rollout.agent, recipe.rollout.reward)
    if recipe.trainer.sft_warmup.steps:
        resolve_warmup(recipe.rollout.agent)
    if files and recipe.model.path:
        _check_model_path(recipe)
    if recipe.store.url is not None and (problem := store_url_problem(recipe.store.url)):
        raise ConfigError(f"store.url {redacted(recipe.store.url)}: {problem}")
    if recipe.cluster.policy != "auto":  # auto: the planner picks a layout that fits (run/layout.py)
        make_policy(recipe.cluster.policy, ResourcePool.from_cluster(recipe.cluster), recipe.cluster.staleness)
    deepspeed_config(recipe.trainer.deepspeed, 1, recipe.trainer.grad_clip, recipe.model.dtype)
    if cuda_available():
        check_gpu_sharing(recipe)


def _check_model_path(recipe: Recipe) -> Path:
    """model.path: a Hugging Face folder whose context fits model.max_model_len."""
    path = Path(recipe.model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path {path} has no config.json; point it at a Hugging Face "
                          "model folder, or unset it to build the tiny model")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path {path}: config.json does not read as JSON ({exc})") from None
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(limit, int) and recipe.model.max_model_len > limit:
        raise ConfigError(f"model.max_model_len ({recipe.model.max_model_len}) is above the model's "
                          f"max_position_embeddings ({limit}) in {path / 'config.json'}; lower model.max_model_len")
    return path


@contextlib.contextmanager
def build_parts(recipe: Recipe, run_dir: Path, resume: bool) -> Iterator[Parts]:
    """Start Ray, the store, the proxy, the rollout fleet, the trainer and the agent runner."""
    check_recipe(recipe)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_run_dir_lock(run_dir))
        # the data first: a bad data section (missing file, eval_size too large) fails in a second,
        # not after a minute of starting services
        tasks = load_tasks(recipe.data)
        _step("starting Ray")
        sigterm = signal.getsignal(signal.SIGTERM)
        needs = device_needs(ResourcePool.from_cluster(recipe.cluster), recipe.rollout.tensor_parallel_size)
        # the servers' key, when they bind beyond loopback, reaches every Ray worker of the run (the
        # trainer ranks post weights to the servers) through the job's environment
        stack.enter_context(_server_key(recipe.cluster.bind))
        env_vars = {SERVER_KEY_ENV: server_key()} if server_key() else {}
        if start_ray(num_gpus=recipe.num_devices, num_cpus=recipe.cluster.num_cpus,
                     address=recipe.cluster.address, resources=custom_resources(needs), env_vars=env_vars):
            stack.callback(stop_ray)  # only a Ray this run started (an embedding program keeps its own)
        # ray.init installs a SIGTERM handler that exits on the spot; keep the caller's, which
        # unwinds (checkpoint, then every service stopped)
        signal.signal(signal.SIGTERM, sigterm)
        model_dir = resolve_model_dir(recipe, run_dir)
        store_url = recipe.store.url
        if store_url is None:
            _step("starting the private Redis")
            store_url = stack.enter_context(RedisServer(run_dir / "redis")).url
        prefix = recipe.store.key_prefix or recipe.run.name
        _step("starting the trajectory manager")
        proxy = stack.enter_context(ProxyProcess(store_url, run_dir / "proxy", prefix=prefix, config=recipe.proxy))
        pool = ResourcePool.from_cluster(recipe.cluster)
        # every resource's device, reserved for the whole run and freed last (after the ranks and
        # servers on it have shut down): a rank and the server of a [train, rollout] resource
        # share its GPU
        placement = RayPlacement(recipe.run.name, recipe.cluster.placement_timeout_s,
                                 tensor_parallel_size=recipe.rollout.tensor_parallel_size)
        stack.callback(placement.close)
        devices = placement.reserve(pool)
        fleet = VLLMFleet(model_dir, run_dir, ProxyAdmin(proxy.url, proxy.admin_key), config=recipe.rollout,
                          devices=devices, model=recipe.model, bind=recipe.cluster.bind)
        stack.callback(_shutdown_fleet, fleet)
        _step(f"starting the trainer on {len(pool.trainers)} rank(s)")
        # created once for the run, each rank on its resource's device; the scheduler's train
        # leases decide when the ranks compute
        trainer = stack.enter_context(Trainer.from_recipe(
            recipe, model_dir, num_ranks=len(pool.trainers), slots=[devices.slot(rid) for rid in sorted(pool.trainers)]))
        # a server that sleeps (a GPU it shares with a rank) trades the GPU with the ranks this way
        fleet.switch = ColocatedSwitch(trainer)
        # on GPUs the ranks send the weights themselves: rank i (on resource sorted(trainers)[i]) by
        # CUDA IPC to the server beside it, rank 0 by NCCL to the others (CPU: safetensors)
        fleet.send_from(trainer, {rid: rank for rank, rid in enumerate(sorted(pool.trainers))})
        batch_episodes = recipe.rollout.batch_size * recipe.rollout.group_size
        scheduler = TagScheduler(recipe.cluster, FleetOnLeases(fleet), batch_episodes,
                                 placement=placement, load_interval_s=0.2)
        _step(f"placing {len(pool)} resource(s) ({recipe.cluster.policy}): starting "
              f"{sum(r.can_rollout for r in pool)} vLLM server(s)")
        stack.callback(scheduler.close)  # before the fleet and the trainer stop: leases go first
        # rollout capacity that comes and goes (Ray nodes joining and lost, servers dying and coming
        # back, elastic resources waiting for a node from the start) goes on the timeline as it
        # happens, and into the next step's log row
        fleet.listeners.append(lambda e: scheduler.cluster_event(e.kind, e.detail, getattr(e, "resource_id", None)))
        scheduler.start()
        if recipe.cluster.address is not None:  # a cluster whose nodes may come and go
            fleet.nodes = NodeWatch()
        fleet.start_supervisor()
        runner = AgentRunner.from_config(proxy.url, proxy.admin_key, recipe.rollout)
        rollout_runner = AgentRunner.from_config(proxy.url, proxy.admin_key, recipe.rollout)
        episodes = EpisodeQueue(store_url, prefix, outage_s=recipe.store.outage_s,
                                train_constrained=recipe.rollout.train_constrained)
        stack.callback(episodes.close)
        logger = RunLogger(recipe, run_dir, resume=resume)
        try:
            yield Parts(recipe=recipe, run_dir=run_dir, model_dir=model_dir, proxy=proxy, fleet=fleet,
                        trainer=trainer, scheduler=scheduler, runner=runner,
                        rollout_runner=rollout_runner, tasks=tasks, episodes=episodes,
                        logger=logger)
        except Exception as exc:
            # a service that died (Redis, the proxy) is what made the loop fail, whatever the error
            # it surfaced as (a refused connection): name it and show its log
            dead = dead_services()
            if dead:
                raise dead[0] from exc
            raise


@contextlib.contextmanager
def _server_key(bind: str) -> Iterator[None]:
    """Rollout servers bound beyond loopback need an API key: $SEAMLESS_VLLM_API_KEY, or one made
    for this run (in the environment, so the proxy's process inherits it; gone when the run ends)."""
    if is_loopback(bind) or server_key():
        yield
        return
    os.environ[SERVER_KEY_ENV] = new_key()
    try:
        yield
    finally:
        os.environ.pop(SERVER_KEY_ENV, None)


def _shutdown_fleet(fleet: VLLMFleet) -> None:
    """Stop the rollout servers. With the proxy dead they cannot be unregistered from it, and that
    error must not replace the one that names the dead proxy (Ray's shutdown, later, ends them)."""
    try:
        fleet.shutdown()
    except Exception as exc:
        if not dead_services():
            raise
        log.warning("stopping the rollout servers: %s", exc)


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path) -> Iterator[None]:
    """One live run per folder: two would share the private Redis's files and the checkpoints.

    The kernel drops an flock however its holder ends (kill -9 too), so a folder is never left
    locked by a dead run, and `--resume` of a killed run always gets it."""
    path = run_dir / "run.lock"
    with open(path, "a+") as handle:  # close-on-exec: the services started below never hold it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is in use by a running seamless run (pid {path.read_text().strip()}); "
                              "wait for it to end or stop it, or pass another --run-dir") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _step(what: str) -> None:
    print(f"seamless run: {what}", flush=True)


def describe_failure(exc: BaseException, run_dir: Path) -> str:
    """One message for a crash of any part, naming where its log is."""
    if isinstance(exc, SeamlessError):
        return str(exc)
    logs = ", ".join(str(p) for p in sorted(run_dir.glob("**/*.log"))[:6])
    return f"{type(exc).__name__}: {exc} (logs: {logs or run_dir})"


__all__ = ["Parts", "build_parts", "check_recipe", "describe_failure", "ServiceError"]
