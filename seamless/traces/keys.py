"""The Redis schema of a run, in one module: every key and what it holds. Imports no torch/ray/vllm.

Keys (all under the run's prefix `P`):

    P:session:{sid}     hash   api_key, status (open|finished), created_at, finished_at, group_id,
                               task_id, metadata (JSON), reward, turn_rewards (JSON)
    P:apikey:{key}      string session id of an agent key (Bearer auth lookup)
    P:turns:{sid}       list   one binary-encoded Turn per element, in call order (one atomic append
                               per call, refused once the session finished). A call's request and
                               a prompt its choices share are stored once, on its first turn.
    P:void:{sid}        set    call ids whose answer never reached the agent (it disconnected, or
                               the record outlived its deadline): readers skip their turns
    P:episodes          stream one entry per finished session: {session_id}; the trainer reads it
                               with the consumer group `trainer` and acknowledges after use
    P:proxy:state       hash   the proxy's shared pause gate: paused, mode, version, cache_salt
    P:proxy:upstreams   hash   url -> model of every registered rollout server
    P:proxy:metrics     hash   worker pid -> its metrics snapshot (JSON), with several workers
    P:proxy:control     pubsub admin changes every proxy worker applies (proxy/control.py)
    P:proxy:ack:{op}    list   one element per worker that applied change `op`
    P:proxy:indoubt:{w} hash   call id -> session key of calls worker `w` recorded and has not yet
                               seen delivered; a worker that finds `w` dead voids them
    P:proxy:alive:{w}   string worker `w`'s heartbeat (expires when it stops)

Token arrays are stored as packed little-endian int32/float32 (4 bytes a token, not JSON
lists). Every multi-key change is one MULTI/EXEC transaction, so a crash never leaves half a
turn or a finished session without its stream entry.
"""


from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "trainer"
"""The stream's consumer group: the trainer reads and acknowledges episodes through it."""
OPEN_SESSION_TTL_S = 7 * 24 * 3600
"""How long an open session's keys live (its turns: after its last call): evaluation sessions (never
finished) and sessions an agent abandoned expire; `finish` keeps the keys until the trainer
acknowledges the episode (then `store.retention_s`)."""


@dataclass(frozen=True)
class Keys:
    prefix: str

    def session(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    def apikey(self, key: str) -> str:
        return f"{self.prefix}:apikey:{key}"

    def turns(self, sid: str) -> str:
        return f"{self.prefix}:turns:{sid}"

    def void(self, sid: str) -> str:
        return f"{self.prefix}:void:{sid}"

    @property
    def episodes(self) -> str:
        return f"{self.prefix}:episodes"

    @property
    def proxy(self) -> ProxyKeys:
        """The keys the proxy's workers share (proxy/control.py)."""
        base = f"{self.prefix}:proxy"
        return ProxyKeys(state=f"{base}:state", upstreams=f"{base}:upstreams", metrics=f"{base}:metrics",
                         channel=f"{base}:control", finished_keys=f"{base}:finished-keys",
                         ack_prefix=f"{base}:ack:", in_doubt_prefix=f"{base}:indoubt:",
                         alive_prefix=f"{base}:alive:")


@dataclass(frozen=True)
class ProxyKeys:
    state: str
    upstreams: str
    metrics: str
    channel: str
    finished_keys: str
    """channel: agent keys of finished sessions, for every worker to drop from its cache"""
    ack_prefix: str
    in_doubt_prefix: str
    alive_prefix: str

    def acks(self, op_id: str) -> str:
        return self.ack_prefix + op_id

    def in_doubt(self, worker: str) -> str:
        return self.in_doubt_prefix + worker

    def alive(self, worker: str) -> str:
        return self.alive_prefix + worker
