import time

import pytest

from seamless.traces.codec import CorruptRecord, decode_turn, encode_turn
from seamless.traces.episodes import EpisodeQueue
from seamless.errors import UnknownSession
from seamless.traces.store import EpisodeEnd, TraceStore
from seamless.types import Turn

pytestmark = pytest.mark.redis

TURN = Turn(session_id="s1", index=0, prompt_token_ids=[1, 2, 300000], completion_token_ids=[7, 8],
            completion_logprobs=[-0.25, -1.5], weight_versions=[3, 4], finish_reason="stop",
            upstream="http://127.0.0.1:1", started_at=1.5, ended_at=2.5, sent_at=1.6, answered_at=1.7,
            first_token_at=2.0)


def test_turn_round_trips_compactly():
    blob = encode_turn(TURN, {"messages": []})
    decoded, request = decode_turn(blob, 0)
    assert decoded == TURN and request == {"messages": []}
    # exactly 4 bytes a token for ids, logprobs and versions beyond the JSON header
    empty = Turn("s1", 0, [], [], [], [], "stop", "http://127.0.0.1:1", 1.5, 2.5)
    assert len(blob) - len(encode_turn(empty, {"messages": []})) == 4 * (3 + 3 * 2)


def test_records_of_the_first_clock_still_decode():
    """A record written before the call clock had its stamps (its started_at was the server's headers)."""
    import json
    import struct

    blob = encode_turn(TURN)
    (head_len,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4:4 + head_len])
    for key in ("clock", "sent_at", "answered_at", "first_token_at"):
        del header[key]
    head = json.dumps(header).encode()
    decoded, _ = decode_turn(struct.pack("<I", len(head)) + head + blob[4 + head_len:], 0)
    assert decoded.completion_token_ids == TURN.completion_token_ids
    assert (decoded.started_at, decoded.sent_at, decoded.answered_at, decoded.first_token_at, decoded.ended_at) == (
        1.5, 1.5, 1.5, 1.5, 2.5)


@pytest.mark.parametrize("blob", [b"", b"\x05\x00\x00\x00{bad}", encode_turn(TURN)[:-3]])
def test_foreign_or_truncated_records_are_reported(blob):
    with pytest.raises(CorruptRecord):
        decode_turn(blob, 0)


async def test_session_lifecycle_and_episode_stream_with_replay(redis_server):
    prefix = "test-store"
    store = TraceStore(redis_server.url, prefix)
    await store.create_session("s1", "key1", "g", "t", {"k": "v"})
    await store.append_turns("s1", [(TURN, None), (TURN, None)])
    await store.set_reward("s1", 0.5, None)
    assert await store.session_of_key("key1") == "s1"
    assert await store.finish("s1") is True
    assert await store.finish("s1") is False  # published once
    assert await store.session_of_key("key1") is None  # the agent key stops working
    record = await store.session("s1")
    assert (record.status, record.reward, record.num_turns, record.metadata) == ("finished", 0.5, 2, {"k": "v"})
    assert [t.index for t in await store.turns("s1")] == [0, 1]
    await store.close()

    queue = EpisodeQueue(redis_server.url, prefix)
    first = queue.take(10, block_ms=100)
    assert [e.session_id for e in first] == ["s1"]
    queue.close()
    # the trainer died before acknowledging: a new consumer with the same name gets it again
    queue = EpisodeQueue(redis_server.url, prefix)
    again = queue.take(10, block_ms=100)
    assert again == first
    queue.ack(again, retention_s=60)
    assert queue.take(10, block_ms=50) == []
    assert 0 < queue.redis.ttl(queue.keys.session("s1")) <= 60
    queue.close()


async def test_a_group_is_created_rewarded_and_finished_in_one_go(redis_server):
    prefix = "test-store-group"
    store = TraceStore(redis_server.url, prefix)
    await store.create_sessions([("a", "ka"), ("b", "kb"), ("c", "kc")], "g", "t", {"k": "v"})
    await store.append_turns("a", [(TURN, None)])
    await store.append_turns("c", [(TURN, None)])
    ends = await store.finish_many([EpisodeEnd("a", reward=1.0), EpisodeEnd("b", reward=0.0),
                                    EpisodeEnd("c", reward=0.0, discard="crashed")])
    assert [(e.num_turns, e.discarded, e.api_key) for e in ends] == [
        (1, None, "ka"), (0, "made no LLM call (nothing the policy sampled)", "kb"), (1, "crashed", "kc")]
    a = await store.session("a")
    assert (a.status, a.reward, a.group_id, a.task_id, a.metadata) == ("finished", 1.0, "g", "t", {"k": "v"})
    assert await store.session_of_key("ka") is None  # the agent keys stop working
    again = await store.finish_many([EpisodeEnd("a", reward=0.5)])
    assert again[0].already_finished and (await store.session("a")).reward == 1.0  # published and rewarded once
    with pytest.raises(UnknownSession):
        await store.finish_many([EpisodeEnd("nope", reward=0.0)])
    await store.close()
    queue = EpisodeQueue(redis_server.url, prefix)
    assert [e.session_id for e in queue.take(10, block_ms=100)] == ["a", "b", "c"]
    assert queue.trajectory("b").sequences == [] and queue.trajectory("c").sequences == []
    assert len(queue.trajectory("a").sequences) == 1
    queue.close()


async def test_replayed_entries_come_back_once_each_until_acknowledged(redis_server):
    # a resumed trainer may take several times before its next checkpoint acknowledges anything:
    # each entry left pending by the previous life must come back exactly once, then new ones
    prefix = "test-store-replay"
    store = TraceStore(redis_server.url, prefix)
    for i in range(5):
        await store.create_session(f"s{i}", f"key{i}", "g", "t", {})
        if i < 3:
            await store.finish(f"s{i}")
    queue = EpisodeQueue(redis_server.url, prefix)
    assert len(queue.take(3, block_ms=100)) == 3  # delivered, never acknowledged: the trainer dies
    queue.close()
    for i in (3, 4):
        await store.finish(f"s{i}")
    await store.close()

    queue = EpisodeQueue(redis_server.url, prefix)
    taken = [queue.take(2, block_ms=100) for _ in range(4)]
    assert [[e.session_id for e in batch] for batch in taken] == [["s0", "s1"], ["s2"], ["s3", "s4"], []]
    queue.close()
    queue = EpisodeQueue(redis_server.url, prefix)  # another life: all five are pending now
    assert [e.session_id for e in queue.backlog()] == [f"s{i}" for i in range(5)]
    queue.close()


async def test_open_sessions_expire_and_finished_ones_wait_for_the_trainer(redis_server):
    import redis as sync_redis

    store = TraceStore(redis_server.url, "test-ttl", open_ttl_s=60)
    await store.create_session("s1", "key-ttl", None, None, {})
    await store.append_call("s1", "c1", [TURN, TURN], {"messages": []}, "test-store:proxy:indoubt:w")
    await store.void_call("s1", "c0")
    keys = [store.keys.session("s1"), store.keys.apikey("key-ttl"), store.keys.turns("s1"), store.keys.void("s1")]
    with sync_redis.Redis.from_url(redis_server.url) as client:
        assert all(0 < client.ttl(key) <= 60 for key in keys)  # an abandoned or evaluation session goes
        assert await store.finish("s1")
        assert [client.ttl(key) for key in keys] == [-1, -2, -1, -1]  # kept until acknowledged
    assert len(await store.turns("s1")) == 2
    await store.close()


def test_entries_a_lost_read_delivered_are_taken_after_redis_answers_again(tmp_path, caplog):
    """A read whose reply never came (Redis stalled past the socket timeout) may still have
    delivered entries; the queue reads its pending list again instead of leaving them there."""
    import logging
    import os
    import signal
    import threading

    import redis

    from seamless.services.redis_server import RedisServer
    from seamless.traces.keys import CONSUMER_GROUP, Keys

    caplog.set_level(logging.WARNING, logger="seamless.run")
    with RedisServer(tmp_path / "redis") as server, redis.Redis.from_url(server.url) as raw:
        queue = EpisodeQueue(server.url, "lost", socket_timeout_s=0.5, outage_s=30)
        assert queue.take(10, block_ms=None) == []
        stream = Keys("lost").episodes
        entry_id = raw.xadd(stream, {"session_id": "s1"}).decode()
        # the reply that got lost: delivered to this consumer, never seen by the queue
        assert raw.xreadgroup(CONSUMER_GROUP, queue.consumer, {stream: ">"}, count=10)
        got: list = []
        os.kill(server.pid, signal.SIGSTOP)
        try:
            reader = threading.Thread(target=lambda: got.extend(queue.take(10, block_ms=2000)))
            reader.start()
            deadline = time.monotonic() + 20
            while "Redis did not answer XREADGROUP" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        reader.join(30)
        assert [e.entry_id for e in got] == [entry_id]
        assert queue.take(10, block_ms=None) == []  # once
        queue.close()
