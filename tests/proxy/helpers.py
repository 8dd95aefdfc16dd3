"""Small clients for the proxy's admin API, shared by the proxy tests."""

from __future__ import annotations

import httpx


class Admin:
    def __init__(self, proxy):
        self.url = proxy.url
        self.headers = {"Authorization": f"Bearer {proxy.admin_key}"}

    def post(self, path: str, json: dict | None = None, timeout: float = 60) -> httpx.Response:
        return httpx.post(self.url + path, json=json, headers=self.headers, timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=60)

    def delete(self, path: str, json: dict) -> httpx.Response:
        return httpx.request("DELETE", self.url + path, json=json, headers=self.headers, timeout=60)

    def session(self, **body) -> dict:
        response = self.post("/sessions", body)
        assert response.status_code == 201, response.text
        return response.json()

    def trajectory(self, session_id: str) -> dict:
        response = self.get(f"/sessions/{session_id}/trajectory")
        assert response.status_code == 200, response.text
        return response.json()
