"""The trainer ranks' rendezvous listens where it is told, not on every interface: two ranks (two
processes) form the gloo group over rank 0's TCPStore, and nothing either listens on is beyond
the loopback address they were given (torch's own env:// store listens on `::`)."""

from __future__ import annotations

import multiprocessing

import psutil

from seamless.services.process import free_port


def _rank(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from seamless.trainer.process_group import join_process_group

    keep = join_process_group("127.0.0.1", port, rank, 2, node_addr="127.0.0.1")
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    listening = sorted({c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN})
    dist.barrier()
    results.put((rank, total.item(), listening))
    dist.destroy_process_group()
    del keep


def test_the_rendezvous_and_gloo_listen_on_the_given_address_only():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank, args=(rank, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        got = sorted(results.get(timeout=120) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert [(rank, total) for rank, total, _ in got] == [(0, 3.0), (1, 3.0)]
    for rank, _, addresses in got:
        assert addresses and set(addresses) == {"127.0.0.1"}, (rank, addresses)
