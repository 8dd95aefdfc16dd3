"""The rollout fleet: vLLM servers as Ray actors behind the proxy, and weight sync to them."""

from seamless.rollout.fleet import VLLMFleet, make_transport
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.records import ServerEvent, ServerStats, WeightUpdateMetrics
from seamless.rollout.transport import DiskTransport, PushPlan, RankTransport, WeightTransport

__all__ = ["DiskTransport", "PushPlan", "RankTransport", "ProxyAdmin", "ServerEvent", "ServerStats", "VLLMFleet",
           "WeightTransport", "WeightUpdateMetrics", "make_transport"]
