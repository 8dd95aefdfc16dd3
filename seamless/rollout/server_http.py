"""Plain HTTP to the rollout servers, shared by the fleet and the weight transports: one POST to
every server at once, and a timer for the phases of an update."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from seamless.errors import ServiceError
from seamless.services.http import control_client
from seamless.services.network import server_headers


class ServersLost(ServiceError):
    """Some servers did not answer at all (refused the connection, dropped it, or timed out), and
    every other one answered 200: what a server whose node died mid-call looks like. A caller that
    can go on without them (a weight update) drops `urls`; to anyone else it is a ServiceError."""

    def __init__(self, urls: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.urls = tuple(dict.fromkeys(urls))


CONNECT_TIMEOUT_S = 10.0
"""A server that takes longer to accept a connection is taken for gone (a dead machine never
answers a SYN; the kernel would wait minutes)."""


def post_each(urls: Sequence[str], path: str, json: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None, timeout_s: float = 600.0) -> list[httpx.Response]:
    """POST to every server at once (with the servers' API key, when they have one); raise naming
    the first that refused, else `ServersLost` naming those that did not answer."""
    headers = server_headers()
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))

    def one(url: str) -> httpx.Response | httpx.HTTPError:
        try:
            return control_client().post(url + path, json=json, params=params, timeout=timeout, headers=headers)
        except httpx.HTTPError as exc:
            return exc

    if len(urls) <= 1:
        answers = [one(url) for url in urls]
    else:
        with ThreadPoolExecutor(len(urls)) as pool:
            answers = list(pool.map(one, urls))
    for url, answer in zip(urls, answers):
        if isinstance(answer, httpx.Response) and answer.status_code != 200:
            raise ServiceError(f"server {url} refused POST {path} ({answer.status_code}): {answer.text[:500]}")
    lost = [(url, answer) for url, answer in zip(urls, answers) if isinstance(answer, httpx.HTTPError)]
    if lost:
        raise ServersLost([url for url, _ in lost], f"server {lost[0][0]} did not answer POST {path}: {lost[0][1]!r}"
                          + (f" (nor did {len(lost) - 1} more)" if len(lost) > 1 else "")) from lost[0][1]
    return answers  # type: ignore[return-value]


def timed(fn, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started
