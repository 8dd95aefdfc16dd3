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


def post_each(urls: Sequence[str], path: str, json: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None, timeout_s: float = 600.0) -> list[httpx.Response]:
    """POST to every server at once (with the servers' API key, when they have one); raise naming
    the first that failed."""
    headers = server_headers()

    def one(url: str) -> httpx.Response:
        try:
            response = control_client().post(url + path, json=json, params=params, timeout=timeout_s, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceError(f"server {url} did not answer POST {path}: {exc!r}") from exc
        if response.status_code != 200:
            raise ServiceError(f"server {url} refused POST {path} ({response.status_code}): {response.text[:500]}")
        return response

    if len(urls) <= 1:
        return [one(url) for url in urls]
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(one, urls))


def timed(fn, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started
