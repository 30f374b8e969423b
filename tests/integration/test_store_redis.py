"""What only RedisStore has: a server that goes away and comes back, and key prefixes."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import pytest

from prompt_store import StoreUnavailable
from prompt_store.redis_store import RedisStore
from tests.store_utils import EventLog, consistency_problems, make_prompt_set

pytestmark = pytest.mark.redis


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_redis_down_gives_a_clear_error_and_redis_back_just_works(restartable_redis_server):
    server = restartable_redis_server
    v1, v2, v3 = (make_prompt_set(seed=s) for s in (1, 2, 3))
    store = RedisStore(server.url, retries=2, backoff_s=0.05)
    events = EventLog()
    try:
        store.put("cats", v1)
        stop = store.subscribe(events)
        server.stop(kill=True)  # a crash, not a clean shutdown

        calls = {"put": lambda: store.put("cats", v2), "get": lambda: store.get("cats"),
                 "resolve": lambda: store.resolve("cats"), "list": store.list,
                 "history": lambda: store.history("cats"), "rollback": lambda: store.rollback("cats", sha(v1)),
                 "delete": lambda: store.delete("cats")}
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as down:
                call()
            assert time.monotonic() - started < 3, f"{name} took too long to give up"
            message = str(down.value)
            assert "unreachable" in message and server.url in message and "3 times" in message, message

        server.start()  # same port, same append-only file
        assert store.resolve("cats").version == sha(v1)  # the put that failed left nothing behind
        assert store.get("cats") == v1
        assert store.put("cats", v3).version == sha(v3)
        assert [h.version for h in store.history("cats")] == [sha(v1), sha(v3)]
        # The watcher reconnects by itself and reports what happened meanwhile (published or caught up).
        assert events.wait_for("cats", sha(v3), "put", timeout_s=5) is not None
        store.rollback("cats", sha(v1))
        assert events.wait_for("cats", sha(v1), "rollback", timeout_s=5) is not None
        assert consistency_problems(store) == []
        stop()
    finally:
        store.close()


def test_changes_missed_while_disconnected_are_reported_after_reconnecting(redis_server):
    v1, v2 = make_prompt_set(seed=1), make_prompt_set(seed=2)
    prefix = f"missed-{uuid.uuid4().hex[:8]}:"
    store, writer = RedisStore(redis_server.url, prefix=prefix), RedisStore(redis_server.url, prefix=prefix)
    events = EventLog()
    try:
        writer.put("cats", v1)
        writer.put("dogs", v1)
        stop = store.subscribe(events)
        watcher = store._watchers[0]
        # Hold the watcher's reconnect until the changes below were published to nobody.
        reconnecting, release = threading.Event(), threading.Event()
        real_connect = watcher._connect

        def held_connect():
            reconnecting.set()
            release.wait(10)
            return real_connect()

        watcher._connect = held_connect
        writer._redis.client_kill_filter(_type="pubsub")  # drops the watcher's subscription
        assert reconnecting.wait(5), "the watcher did not notice it was cut off"
        writer.put("cats", v2)
        writer.delete("dogs")
        writer.put("newt", v1)
        assert events.wait_for("cats", sha(v2), "put", timeout_s=0.3) is None  # published to nobody
        release.set()
        assert events.wait_for("cats", sha(v2), "put") is not None
        assert events.wait_for("dogs", None, "delete") is not None
        assert events.wait_for("newt", sha(v1), "put") is not None
        writer.rollback("cats", sha(v1))  # and the live subscription works again
        assert events.wait_for("cats", sha(v1), "rollback") is not None
        stop()
    finally:
        store.close()
        writer.close()


def test_prefixes_keep_deployments_apart(redis_server):
    shared_bytes = make_prompt_set(seed=7)
    run = uuid.uuid4().hex[:8]
    blue = RedisStore(redis_server.url, prefix=f"blue-{run}:")
    green = RedisStore(redis_server.url, prefix=f"green-{run}:")
    green_events = EventLog()
    try:
        stop = green.subscribe(green_events)
        blue.put("cats", shared_bytes)
        green.put("dogs", shared_bytes)
        assert [r.task for r in blue.list()] == ["cats"]
        assert [r.task for r in green.list()] == ["dogs"]
        blue.delete("cats")  # frees blue's copy of the bytes only
        assert green.get("dogs") == shared_bytes
        assert green_events.wait_for("dogs", sha(shared_bytes), "put") is not None
        assert green_events.wait_for("cats", None, "delete", timeout_s=0.3) is None
        assert list(blue._redis.scan_iter(match=f"blue-{run}:*")) == []  # blue's delete left no key behind
        stop()
    finally:
        blue.close()
        green.close()


@pytest.mark.parametrize("write", ["put", "rollback", "delete"])
def test_a_write_refused_while_redis_is_paused_is_never_applied_later(restartable_redis_server, write):
    """Issue 23 item 1: SIGSTOP Redis, the write times out and is refused; SIGCONT: it must not land then."""
    import os
    import signal

    server = restartable_redis_server
    v1, v2 = make_prompt_set(seed=1), make_prompt_set(seed=2)
    store = RedisStore(server.url, socket_timeout_s=0.3, connect_timeout_s=0.3, retry_s=1.0, retries=3)
    try:
        store.put("cats", v1)
        store.put("cats", v2)
        before = store.resolve("cats")  # v2 is current; a rollback would go to v1, a delete remove the task
        calls = {"put": lambda: store.put("cats", make_prompt_set(seed=3)),
                 "rollback": lambda: store.rollback("cats", sha(v1)), "delete": lambda: store.delete("cats")}
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            # paused after the clock read: the script itself is what waits in Redis's socket
            real_time = store._redis.time
            store._redis.time = lambda: (os.kill(server.process.pid, signal.SIGCONT), real_time(),
                                         os.kill(server.process.pid, signal.SIGSTOP))[1]
            with pytest.raises(StoreUnavailable, match="nothing was changed|unreachable"):
                calls[write]()
        finally:
            store._redis.time = real_time
            os.kill(server.process.pid, signal.SIGCONT)
        time.sleep(0.5)  # Redis now runs what was queued in its sockets
        assert store.resolve("cats") == before
        assert [h.version for h in store.history("cats")] == [sha(v1), sha(v2)]
        assert consistency_problems(store) == []
    finally:
        store.close()


def test_a_write_whose_answer_is_lost_but_landed_is_reported_done(restartable_redis_server, monkeypatch):
    """The other half of the rule: a put that Redis applied is answered as done even when its reply timed out
    (the read-back after the deadline finds it), never as a failure."""
    server = restartable_redis_server
    store = RedisStore(server.url, socket_timeout_s=0.3, retry_s=0.6, retries=1)
    try:
        blob = make_prompt_set(seed=4)
        script = store._put

        def applied_then_lost(keys, args):
            script(keys=keys, args=args)
            raise redis_timeout()

        monkeypatch.setattr(store, "_put", applied_then_lost)
        record = store.put("dogs", blob)
        assert record.version == sha(blob) and store.resolve("dogs").version == sha(blob)
    finally:
        store.close()


def redis_timeout():
    import redis

    return redis.TimeoutError("Timeout reading from socket (simulated lost reply)")
