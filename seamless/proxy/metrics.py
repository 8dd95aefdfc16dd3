"""Prometheus text metrics of the proxy: requests, latency, tokens, errors, sessions."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)  # (route, status) -> count
    errors: Counter = field(default_factory=Counter)  # kind -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sessions_created: int = 0
    sessions_finished: int = 0
    failovers: int = 0
    token_in_prompts: int = 0
    """Chat calls sent with a prompt spliced from recorded token ids (proxy.token_in_token_out)."""
    token_in_fallbacks: int = 0
    """Chat calls that continued a recorded call but had to be rendered by the server instead."""
    coalesced_calls: int = 0
    """Agent calls that shared one upstream request with identical calls of other sessions."""
    coalesced_requests: int = 0
    """Upstream requests that carried several agent calls (proxy.coalesce_window_ms)."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(_LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency_counts[bisect.bisect_left(_LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds

    def snapshot(self) -> dict:
        """The counters as JSON-ready data (for summing several workers)."""
        data = {k: v for k, v in vars(self).items() if k not in ("requests", "errors")}
        return data | {"requests": [[r, s, n] for (r, s), n in self.requests.items()], "errors": dict(self.errors)}

    @classmethod
    def total(cls, snapshots: list[dict]) -> Metrics:
        """The sum of several workers' snapshots."""
        total = cls()
        for snap in snapshots:
            for route, status, n in snap["requests"]:
                total.requests[(route, status)] += n
            total.errors.update(snap["errors"])
            total.latency_counts = [a + b for a, b in zip(total.latency_counts, snap["latency_counts"])]
            for name, value in snap.items():
                if name not in ("requests", "errors", "latency_counts"):
                    setattr(total, name, getattr(total, name) + value)
        return total

    @property
    def sessions_open(self) -> int:
        return self.sessions_created - self.sessions_finished

    def render(self, upstreams: list[dict]) -> str:
        lines = ["# TYPE seamless_proxy_requests_total counter"]
        lines += [f'seamless_proxy_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        lines.append("# TYPE seamless_proxy_errors_total counter")
        lines += [f'seamless_proxy_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
        lines.append("# TYPE seamless_proxy_request_seconds histogram")
        cumulative = 0
        for bound, count in zip((*_LATENCY_BUCKETS_S, float("inf")), self.latency_counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'seamless_proxy_request_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [f"seamless_proxy_request_seconds_sum {self.latency_sum_s}",
                  f"seamless_proxy_request_seconds_count {cumulative}",
                  "# TYPE seamless_proxy_tokens_total counter",
                  f'seamless_proxy_tokens_total{{kind="prompt"}} {self.prompt_tokens}',
                  f'seamless_proxy_tokens_total{{kind="completion"}} {self.completion_tokens}',
                  "# TYPE seamless_proxy_sessions_open gauge",
                  f"seamless_proxy_sessions_open {self.sessions_open}",
                  "# TYPE seamless_proxy_failovers_total counter",
                  f"seamless_proxy_failovers_total {self.failovers}",
                  "# TYPE seamless_proxy_token_in_prompts_total counter",
                  f'seamless_proxy_token_in_prompts_total{{outcome="spliced"}} {self.token_in_prompts}',
                  f'seamless_proxy_token_in_prompts_total{{outcome="rendered"}} {self.token_in_fallbacks}',
                  "# TYPE seamless_proxy_coalesced_total counter",
                  f'seamless_proxy_coalesced_total{{kind="calls"}} {self.coalesced_calls}',
                  f'seamless_proxy_coalesced_total{{kind="requests"}} {self.coalesced_requests}',
                  "# TYPE seamless_proxy_upstream_healthy gauge"]
        lines += [f'seamless_proxy_upstream_healthy{{url="{u["url"]}"}} {int(u["healthy"])}' for u in upstreams]
        lines.append("# TYPE seamless_proxy_upstream_inflight gauge")
        lines += [f'seamless_proxy_upstream_inflight{{url="{u["url"]}"}} {u["inflight"]}' for u in upstreams]
        return "\n".join(lines) + "\n"
