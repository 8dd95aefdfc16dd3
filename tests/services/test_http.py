"""The process's control client: built once (a client per call built a TLS context per call), and
built again in a forked child (a connection pool's sockets must not be shared across processes); its
connections send TCP keepalives, so a server whose machine vanished fails a call in seconds."""

import http.server
import os
import subprocess
import threading

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


def test_control_connections_send_keepalives():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert control_client().get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
        # the pooled connection stays open; the kernel shows its keepalive timer
        shown = subprocess.run(["ss", "-tnoH", "state", "established", "dport", f"= :{port}"],
                               capture_output=True, text=True, check=True).stdout
        assert "timer:(keepalive" in shown, shown
    finally:
        server.shutdown()
        server.server_close()


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass
