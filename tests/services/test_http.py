"""The process's control client: built once (a client per call built a TLS context per call), and
built again in a forked child (a connection pool's sockets must not be shared across processes)."""

import os

from seamless.services.http import control_client, tls_context


def test_one_control_client_and_tls_context_per_process():
    assert control_client() is control_client()
    assert tls_context() is tls_context()


def test_a_forked_child_builds_its_own_client():
    inherited = control_client()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got a client of its own, then leave at once
        os.write(write_end, b"own" if control_client() is not inherited else b"shared")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.waitpid(pid, 0)
    assert answer == b"own"
    assert control_client() is inherited
