"""The rollout fleet: vLLM servers as Ray actors behind the proxy, and weight sync to them."""

from seamless.rollout.fleet import VLLMFleet, make_transport
from seamless.rollout.proxy_admin import ProxyAdmin
from seamless.rollout.records import ServerEvent, ServerStats, WeightUpdateMetrics
from seamless.rollout.transport import DiskTransport, NcclTransport, WeightTransport

__all__ = ["DiskTransport", "NcclTransport", "ProxyAdmin", "ServerEvent", "ServerStats", "VLLMFleet",
           "WeightTransport", "WeightUpdateMetrics", "make_transport"]
