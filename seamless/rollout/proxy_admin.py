"""The proxy's admin HTTP API, as the fleet uses it (the fleet never reaches into the proxy)."""

from __future__ import annotations

from typing import Any, Literal

import httpx

from seamless.errors import ServiceError


class ProxyAdmin:
    """Synchronous client of one proxy's admin routes (Bearer admin key)."""

    def __init__(self, url: str, admin_key: str, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self._client = httpx.Client(headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise ServiceError(f"the proxy at {self.url} did not answer {method} {path}: {exc!r}") from exc
        if response.status_code >= 300:
            raise ServiceError(f"the proxy refused {method} {path} ({response.status_code}): {response.text[:500]}")
        return response.json()

    def add_upstream(self, url: str) -> None:
        self._call("POST", "/admin/upstreams", {"url": url})

    def remove_upstream(self, url: str) -> bool:
        """Unregister a server; False when the proxy did not know it."""
        response = self._client.request("DELETE", self.url + "/admin/upstreams", json={"url": url})
        return response.status_code == 200

    def upstreams(self) -> dict[str, Any]:
        return self._call("GET", "/admin/upstreams")

    def pause(self, mode: Literal["keep", "abort"]) -> None:
        self._call("POST", "/admin/pause", {"mode": mode})

    def resume(self, version: int, cache_salt: str | None) -> None:
        body: dict[str, Any] = {"weight_version": version}
        if cache_salt is not None:
            body["cache_salt"] = cache_salt
        self._call("POST", "/admin/resume", body)

    def close(self) -> None:
        self._client.close()
