"""A stalled Redis (SIGSTOP .. SIGCONT) under a running proxy: a call the agent saw fail is never
in the trace, and a call the openai client retried is in it once.

Each test holds Redis stopped until the proxy says (on /metrics) that the fault happened, so the
order of events is arranged, not hoped for."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import openai
import pytest

from tests.faults.helpers import health, wait_for
from tests.proxy.helpers import Admin

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "hi"}]


def _errors(proxy, kind: str) -> int:
    text = httpx.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {proxy.admin_key}"}, timeout=10).text
    line = next((l for l in text.splitlines() if l.startswith("seamless_proxy_errors_total") and f'"{kind}"' in l), None)
    return int(float(line.split()[-1])) if line else 0


def _settled(proxy) -> None:
    """Every void the proxy owes is in Redis (so reading the trace now shows the final state)."""
    wait_for(lambda: health(proxy).json().get("pending_voids") == 0, 30, "the proxy stored its voids")


class Stalled:
    """Redis stopped inside the block (continued however the block ends)."""

    def __init__(self, redis_server) -> None:
        self.pid = redis_server.pid

    def __enter__(self) -> Stalled:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        self.resume()


def test_calls_the_agent_saw_fail_in_a_redis_stall_are_not_recorded(stall_proxy, own_redis):
    admin = Admin(stall_proxy)
    session = admin.session()
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=2, timeout=60)
    with Stalled(own_redis):
        with pytest.raises(openai.APIStatusError) as failed:  # the first try and both retries
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
        assert failed.value.status_code == 503 and "did not record this call" in str(failed.value)
        with pytest.raises(openai.APIError):  # streaming: the tokens came, the end did not
            for _ in client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, stream=True):
                pass
    _settled(stall_proxy)
    assert admin.trajectory(session["session_id"])["turns"] == []  # 4 calls reached Redis late, all voided
    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
    assert len(admin.trajectory(session["session_id"])["turns"]) == 1  # and the proxy works on


def _retried_call(session: dict, timeout_s: float, result: dict) -> None:
    client = openai.OpenAI(base_url=session["base_url"], api_key=session["api_key"], max_retries=5,
                           timeout=timeout_s)
    try:
        result["reply"] = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, logprobs=True)
    except Exception as exc:  # reported by the test's assertion
        result["error"] = exc


@pytest.mark.parametrize("fault", ["proxy gives up (503)", "client gives up (timeout)"])
def test_a_call_the_openai_client_retried_is_recorded_once(fault, own_redis, vllm_server, tmp_path):
    from seamless.proxy.server import ProxyProcess

    # either the proxy's record deadline or the client's read timeout is the shorter one
    store_timeout, client_timeout = (1, 60) if fault.startswith("proxy") else (60, 1.5)
    error_kind = "store_unavailable" if fault.startswith("proxy") else "client_disconnected"
    with ProxyProcess(own_redis.url, tmp_path / "proxy", upstreams=[vllm_server.url], prefix="retry",
                      extra_args=["--store-timeout", str(store_timeout)]) as proxy:
        admin = Admin(proxy)
        session = admin.session()
        result: dict = {}
        with Stalled(own_redis) as stall:
            caller = threading.Thread(target=_retried_call, args=(session, client_timeout, result))
            caller.start()
            wait_for(lambda: _errors(proxy, error_kind) >= 1, 30, f"the first try failed ({error_kind})")
            stall.resume()  # a retry now goes through
            caller.join(120)
        assert "error" not in result, result
        _settled(proxy)
        turns = admin.trajectory(session["session_id"])["turns"]
        assert len(turns) == 1  # the try the agent did not get is voided, the retry recorded once
        got = [entry.logprob for entry in result["reply"].choices[0].logprobs.content]
        assert turns[0]["logprobs"] == pytest.approx(got, abs=1e-5)  # the one recorded is the one received
