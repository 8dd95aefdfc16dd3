"""Reading a vLLM server's Prometheus /metrics into plain numbers."""

from __future__ import annotations

import httpx

from seamless.services.http import control_client
from seamless.services.network import server_headers


def read_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Each metric name → its value summed over label sets; {} when the server does not answer."""
    try:
        text = control_client().get(f"{url}/metrics", timeout=timeout_s, headers=server_headers()).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values
