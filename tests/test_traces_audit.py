"""The end-of-run ledger (traces/audit.py): every finished episode trained once or still waiting in
the stream, none lost, none trained twice; over the real stream of the session's Redis."""

from __future__ import annotations

import uuid

from seamless.traces.audit import EpisodeLedger
from seamless.traces.episodes import EpisodeQueue


def _queue(redis_server, redis_client, sessions: list[str]) -> EpisodeQueue:
    prefix = f"audit-{uuid.uuid4().hex[:8]}"
    queue = EpisodeQueue(redis_server.url, prefix)
    for sid in sessions:  # what the proxy's store adds when a session finishes
        redis_client.xadd(queue.keys.episodes, {"session_id": sid})
    return queue


def test_every_finished_episode_is_trained_once_or_waits_in_the_stream(redis_server, redis_client):
    queue = _queue(redis_server, redis_client, ["a", "b", "c", "d"])
    ledger = EpisodeLedger()
    ledger.on_finished(["a", "b", "c", "d"])
    taken = queue.take(4)
    ledger.on_trained([e.session_id for e in taken[:3]])
    queue.ack(taken[:3], retention_s=60)  # trained and checkpointed: gone from the stream
    audit = ledger.audit(e.session_id for e in queue.in_stream())
    assert (audit.finished, audit.trained, audit.waiting, audit.ok) == (4, 3, 1, True)
    assert "none lost, none trained twice" in audit.line()
    queue.close()


def test_an_episode_lost_or_trained_twice_is_named(redis_server, redis_client):
    queue = _queue(redis_server, redis_client, ["a", "b"])
    ledger = EpisodeLedger()
    ledger.on_finished(["a", "b", "never-on-the-stream"])
    taken = queue.take(2)
    ledger.on_trained(["a", "b"])
    ledger.on_trained(["b"])  # a second step trained it again
    queue.ack(taken, retention_s=60)
    audit = ledger.audit(e.session_id for e in queue.in_stream())
    assert audit.lost == ("never-on-the-stream",) and audit.trained_twice == ("b",) and not audit.ok
    assert "1 LOST, 1 TRAINED TWICE" in audit.line()
    queue.close()
