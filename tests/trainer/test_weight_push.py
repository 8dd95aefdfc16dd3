"""The rank side of the GPU weight transports (trainer/weight_push.py), as far as a CPU goes.

CUDA IPC and NCCL need GPUs (scripts/gpu_check.py's `rank_ipc` and `colocated` sections run them).
Here: what the rank sends is what vLLM 0.32's own parsers accept, the vLLM server routes and
classes it drives exist in the installed vLLM, and the weights are walked in one fixed order
(ZeRO-3's gathers are collective, so every rank must walk them alike).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

from seamless.trainer.weight_push import (FanoutClient, gathered_buckets, gathered_params, ipc_update_info,
                                          module_source)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 8, bias=True)).to(torch.bfloat16)


def test_the_ipc_payload_is_what_vllms_ipc_engine_parses(monkeypatch):
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo

    named = list(_model().named_parameters())
    payload = ipc_update_info(named, handle=lambda t: ("handle", tuple(t.shape)))
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # what the fleet sets for an ipc server
    info = IPCWeightTransferUpdateInfo(**payload)
    assert info.names == ["0.weight", "1.weight", "1.bias"]
    assert [getattr(torch, d) for d in info.dtype_names] == [torch.bfloat16] * 3  # how vLLM reads them back
    assert info.shapes == [[16, 8], [8, 8], [8]]
    assert [next(iter(h.values())) for h in info.ipc_handles] == [("handle", (16, 8)), ("handle", (8, 8)),
                                                                  ("handle", (8,))]
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION")
    with pytest.raises(ValueError, match="VLLM_ALLOW_INSECURE_SERIALIZATION"):
        IPCWeightTransferUpdateInfo(**payload)  # why the server needs the flag


def test_the_nccl_source_declares_what_it_yields_in_one_order():
    from vllm.distributed.weight_transfer.base import WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    model = _model()
    source = module_source(model, stage3=False)
    assert isinstance(source, WeightSource)
    meta = source.metadata()
    pairs = list(source)
    assert [m.name for m in meta] == [n for n, _ in pairs] == [n for n, _ in model.named_parameters()]
    assert all(m.dtype == t.dtype and m.shape == tuple(t.shape) for m, (_, t) in zip(meta, pairs))
    assert [n for n, _ in gathered_params(model, False)] == [m.name for m in meta]
    info = NCCLTrainerInitInfo(master_address="127.0.0.1", master_port=29555, world_size=3, packed=True, rank=0)
    assert info.is_sender  # rank 0 sends; the fields the rank passes exist in this vLLM


def test_buckets_are_walked_as_planned_with_the_live_parameters():
    model = _model()
    buckets = [["0.weight"], ["1.weight", "1.bias"]]
    walked = list(gathered_buckets(model, False, buckets))
    assert [[n for n, _ in b] for b in walked] == buckets
    # no copy: the handles point into the parameters themselves (ZeRO-0/1/2)
    assert walked[0][0][1].data_ptr() == model[0].weight.data_ptr()


def test_every_vllm_route_the_rank_calls_is_served_by_this_vllm():
    import vllm

    router = Path(vllm.__file__).parent / "entrypoints" / "rl" / "online" / "api_router.py"
    served = {node.args[0].value for node in ast.walk(ast.parse(router.read_text()))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("post", "get")
              and node.args and isinstance(node.args[0], ast.Constant)}
    source = (Path(__file__).parents[2] / "seamless" / "trainer" / "weight_push.py").read_text()
    called = {c.value for c in ast.walk(ast.parse(source)) if isinstance(c, ast.Constant)
              and isinstance(c.value, str) and c.value.startswith("/") and "_" in c.value}
    assert called and called <= served, sorted(called - served)
    assert {"/init_weight_transfer_engine", "/update_weights", "/get_world_size"} <= called
    assert importlib.util.find_spec("vllm.distributed.weight_transfer.ipc_engine") is not None
    assert hasattr(FanoutClient, "finish_weight_update")
