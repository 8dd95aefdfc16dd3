import os

import psutil
import redis

from seamless.services.redis_server import RedisServer


def test_write_and_read_through_the_session_server(redis_client):
    redis_client.set("test:foundation:key", b"\x00\x01binary")
    redis_client.xadd("test:foundation:stream", {"episode": "e1"})
    assert redis_client.get("test:foundation:key") == b"\x00\x01binary"
    assert redis_client.xlen("test:foundation:stream") == 1


def test_private_server_listens_only_locally(redis_server):
    listening = [c for c in psutil.Process(redis_server.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening
    if redis_server.url.startswith("unix://"):
        assert listening == []  # unix socket only: no TCP port at all


def test_data_survives_a_restart_in_the_same_folder(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        with redis.Redis.from_url(server.url) as client:
            client.xadd("episodes", {"id": "42"})
    with RedisServer(tmp_path / "redis") as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.xrange("episodes")[0][1] == {b"id": b"42"}


def test_long_run_folders_fall_back_to_loopback_tcp(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with RedisServer(deep) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        pid = server.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(deep / "redis.sock")


def test_a_server_left_by_a_killed_run_is_stopped_and_its_data_kept(tmp_path):
    # the owner and its watchdog both SIGKILLed (kill -9 of everything): the server stays behind;
    # the next server for the folder stops it (SIGTERM: it writes its AOF) instead of sharing the files
    import signal
    import subprocess
    import sys

    import pytest

    from seamless.errors import ServiceError

    owner = subprocess.Popen([sys.executable, "-c", "import sys, time; from seamless.services.redis_server import "
                              f"RedisServer; s = RedisServer({str(tmp_path / 'redis')!r}).start(); "
                              "print(s.pid, s.url, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    pid, url = owner.stdout.readline().split()
    with redis.Redis.from_url(url) as client:
        client.xadd("episodes", {"id": "7"})
    with pytest.raises(ServiceError, match="stop that process first"):
        RedisServer(tmp_path / "redis").start()  # its owner still runs: refuse, touch nothing
    with redis.Redis.from_url(url) as client:
        assert client.ping()  # its socket is still there
    watchdogs = [p for p in psutil.process_iter(["cmdline"])
                 if "watchdog.py" in " ".join(p.info["cmdline"] or []) and f"-{pid}" in (p.info["cmdline"] or [])]
    for process in [*watchdogs, psutil.Process(owner.pid)]:
        process.send_signal(signal.SIGKILL)
    owner.wait()
    assert len(watchdogs) == 1 and psutil.pid_exists(int(pid))
    with RedisServer(tmp_path / "redis") as server:
        assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
        with redis.Redis.from_url(server.url) as client:
            assert client.xrange("episodes")[0][1] == {b"id": b"7"}
