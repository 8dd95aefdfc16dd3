"""What a run's processes listen on beyond loopback, and whether each such socket answers a caller
without a key: Ray's gRPC sockets must refuse a call without the cluster's token (UNAUTHENTICATED),
HTTP services (the vLLM servers' guard, the proxy, Ray's runtime-env agent) must answer 401.
Used by scripts/run_on_local_nodes.py (listening.json) and the several-nodes tests."""

from __future__ import annotations

import ipaddress

import grpc
import httpx
import psutil

# one method of each Ray gRPC service that listens on a node; a socket answers its own service's
# method (OK without token auth) and UNIMPLEMENTED for the others
RAY_METHODS = ["/ray.rpc.NodeManagerService/GetNodeStats", "/ray.rpc.ObjectManagerService/Pull",
               "/ray.rpc.CoreWorkerService/GetCoreWorkerStats", "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo"]


def reached_at(ip: str, port: int, host_for_any: str) -> str | None:
    """host:port a socket listening on `ip` is reached at from another node; None on 127.0.0.1 or
    ::1 (127.0.0.2, ... stand for node addresses). One bound to every interface ("::",
    "0.0.0.0") is reached at `host_for_any`."""
    address = ipaddress.ip_address(ip)
    address = getattr(address, "ipv4_mapped", None) or address
    if str(address) in ("127.0.0.1", "::1"):
        return None
    return f"{host_for_any if address.is_unspecified else address}:{port}"


def listening_beyond_loopback(host_for_any: str) -> list[tuple[str, str]]:
    """(host:port to reach it at, process) for every TCP socket this process's descendants listen
    on beyond loopback (`reached_at`)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            name = " ".join(process.cmdline())[:200]
            for conn in process.net_connections(kind="inet"):
                target = reached_at(conn.laddr.ip, conn.laddr.port, host_for_any)
                if conn.status == psutil.CONN_LISTEN and target is not None:
                    found.append((target, name))
        except psutil.Error:
            continue
    return found


def answers_without_a_key(target: str) -> str | None:
    """None when `target` (host:port) refuses a caller without a key; else what it answered."""
    try:  # HTTP first: a gRPC server breaks off an HTTP/1.1 request at once
        status = httpx.get(f"http://{target}/", timeout=30).status_code
        return None if status == 401 else f"HTTP {status}"
    except httpx.RemoteProtocolError:
        pass
    answers = _grpc_answers(target)
    if answers is None:
        return "neither HTTP nor gRPC"
    return None if "OK" not in answers and "UNAUTHENTICATED" in answers else f"gRPC {answers}"


def _grpc_answers(target: str) -> list[str] | None:
    """The status of each of RAY_METHODS called without a token; None when `target` is not gRPC."""
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            return None
        answers = []
        for method in RAY_METHODS:
            call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
            try:
                call(b"", timeout=30)
                answers.append("OK")
            except grpc.RpcError as error:
                answers.append(error.code().name)
        return answers
