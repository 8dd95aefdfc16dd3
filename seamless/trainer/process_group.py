"""The trainer ranks' process group, on sockets bound to the ranks' own node addresses.

torch's default rendezvous (`env://`, what DeepSpeed's init_distributed uses) starts rank 0's
TCPStore on every interface (`::`), with no key, whatever MASTER_ADDR says, and gloo binds the
address the machine's hostname resolves to. Here rank 0 opens the store's listening socket itself,
on MASTER_ADDR only (its node's address: loopback on one machine), and hands it to the TCPStore;
gloo's sockets bind this rank's node address. DeepSpeed then wraps the group already formed.
NCCL (GPUs) picks its own bootstrap interface (NCCL_SOCKET_IFNAME), as before.
"""

from __future__ import annotations

import datetime
import socket

STORE_TIMEOUT = datetime.timedelta(minutes=30)


def join_process_group(master_addr: str, master_port: int, rank: int, world_size: int,
                       node_addr: str) -> socket.socket | None:
    """Form the process group; returns rank 0's listening socket (keep it open while the group lives)."""
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    listener = None
    if rank == 0:
        listener = socket.socket(socket.AF_INET6 if ":" in master_addr else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((master_addr, master_port))
        listener.listen(128)
    store = dist.TCPStore(master_addr, master_port, world_size, rank == 0, timeout=STORE_TIMEOUT,
                          master_listen_fd=listener.fileno() if listener is not None else None)
    backend = get_accelerator().communication_backend_name()
    options = None
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=node_addr)]
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=STORE_TIMEOUT,
                            pg_options=options)
    return listener
