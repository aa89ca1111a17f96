"""Ring buffer, subscriber queues, the SQLite state store and the device state machine."""

from __future__ import annotations

import threading

import pytest

from bridge.state import StateStore
from bridge.streams import DeviceStream, Subscriber, sse_events
from hal.errors import HalError
from hal.protocol import InferenceLine, RawLine


def _line(n: int) -> InferenceLine:
    return InferenceLine(seq=n, latency_us=10, outputs=(0.5,), top=0)


def test_ring_keeps_the_most_recent_lines_with_sequence_numbers():
    stream = DeviceStream("d", capacity=5)
    for n in range(12):
        stream.publish(_line(n))
    recent = stream.recent(100)
    assert [e.seq for e in recent] == [8, 9, 10, 11, 12]
    assert stream.recent(2)[-1].line["seq"] == 11
    assert stream.last_seq == 12
    assert stream.latest("inference").seq == 12
    assert stream.latest("boot") is None


def test_slow_subscriber_loses_oldest_and_is_told_how_many():
    stream = DeviceStream("d", capacity=100, queue_capacity=10)
    slow = stream.subscribe()
    fast = stream.subscribe()
    got_fast = []
    for n in range(25):
        stream.publish(_line(n))
        entries, dropped = fast.take(0)
        assert dropped == 0
        got_fast.extend(e.seq for e in entries)
    assert got_fast == list(range(1, 26))  # the subscriber that keeps up loses nothing
    entries, dropped = slow.take(0)
    assert dropped == 15
    assert [e.seq for e in entries] == list(range(16, 26))  # the newest ten


def test_resume_after_sequence_and_missed_lines_counted():
    stream = DeviceStream("d", capacity=5, queue_capacity=100)
    for n in range(10):
        stream.publish(_line(n))
    sub = stream.subscribe(since=7)
    entries, dropped = sub.take(0)
    assert [e.seq for e in entries] == [8, 9, 10] and dropped == 0
    sub2 = stream.subscribe(since=2)  # 3..5 are gone from the ring buffer
    entries, dropped = sub2.take(0)
    assert [e.seq for e in entries] == [6, 7, 8, 9, 10] and dropped == 3
    sub3 = stream.subscribe(since=999)  # from a previous bridge run: start from now
    assert sub3.take(0) == ([], 0)
    stream.publish(RawLine(text="x"))
    assert [e.seq for e in sub3.take(0)[0]] == [11]


def test_sse_events_format_and_unsubscribe_on_close():
    stream = DeviceStream("d", capacity=10, queue_capacity=2)
    sub = stream.subscribe()
    gen = sse_events(stream, sub, ping_s=0.05, poll_s=0.01)
    assert next(gen).startswith(b"retry:")
    for n in range(3):
        stream.publish(_line(n))
    chunk = next(gen).decode()
    assert chunk.startswith('event: dropped\ndata: {"count":1}\n\n')
    assert "id: 2\nevent: line\ndata: {" in chunk and "id: 3\n" in chunk
    assert next(gen) == b": ping\n\n"
    assert stream.subscriber_count == 1
    gen.close()
    assert stream.subscriber_count == 0


def test_closed_stream_ends_readers():
    stream = DeviceStream("d")
    sub = stream.subscribe()
    done = threading.Event()

    def reader():
        while sub.take(5) is not None:
            pass
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    stream.close()
    assert done.wait(2)
    assert stream.subscribe().take(0) is None


def test_subscriber_never_blocks_publisher():
    sub = Subscriber(capacity=3)
    stream = DeviceStream("d")
    for n in range(10000):
        sub.offer(stream.publish(_line(n)))
    entries, dropped = sub.take(0)
    assert len(entries) == 3 and dropped == 9997


def _job(job_id: str, state: str = "running") -> dict:
    return {"id": job_id, "device_id": "dev", "state": state, "created_at": "t",
            "started_at": "t", "finished_at": None, "model_sha256": "ab" * 32,
            "steps": [{"name": "compile", "status": "started", "started_at": "t",
                       "finished_at": None, "detail": {}}], "report": None, "error": None}


def test_state_survives_reopen_and_marks_interrupted(tmp_path):
    store = StateStore(tmp_path)
    store.insert_job(_job("a" * 16))
    store.insert_job(_job("b" * 16, "succeeded"))
    store.set_verified_model("dev", "cd" * 32, "2024-01-01T00:00:00Z", "b" * 16)
    store.close()
    store = StateStore(tmp_path)
    assert store.mark_interrupted("now") == ["a" * 16]
    job = store.get_job("a" * 16)
    assert job["state"] == "interrupted" and job["error"]["code"] == "interrupted"
    assert job["error"]["class"] == "infrastructure" and job["finished_at"] == "now"
    assert store.get_job("b" * 16)["state"] == "succeeded"
    assert store.verified_model("dev")["sha256"] == "cd" * 32
    assert [j["id"] for j in store.list_jobs()] == ["b" * 16, "a" * 16]
    store.close()


def test_one_bridge_per_state_directory(tmp_path):
    store = StateStore(tmp_path)
    with pytest.raises(HalError) as err:
        StateStore(tmp_path)
    assert err.value.code == "unavailable"
    store.close()
    StateStore(tmp_path).close()


def test_history_is_pruned(tmp_path):
    store = StateStore(tmp_path, history=10)
    for n in range(30):
        store.insert_job(_job(f"{n:016x}", "failed"))
    assert len(store.list_jobs(limit=1000)) == 10
    store.close()


def test_unwritable_state_dir_is_classified(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HalError) as err:
        StateStore(blocker / "state")
    assert err.value.code == "unavailable" and "state directory" in err.value.message


# ------------------------------------------------------------------ the device state machine


def _slot(tmp_path):
    import tests.bridge.fake_driver  # noqa: F401  (registers "test-fake")
    from bridge.registry import DeviceSlot
    from hal.driver import DriverContext, build_driver

    driver = build_driver("test-fake", "d1", {"period_ms": 0}, DriverContext(tmp_path))
    return DeviceSlot("d1", driver, configured=True, settings={},
                      stream=DeviceStream("d1", 10, 10))


def _failure(code: str, **rollback) -> dict:
    from hal.driver import RollbackOutcome

    outcome = RollbackOutcome(**{"needed": True, "attempted": False, "verified": False,
                                 "running_sha256": None, "reason": "r", **rollback})
    return {"code": code, "message": code, "class": "device",
            "detail": {"rollback": outcome.to_dict()}}


A, B = "a" * 64, "b" * 64


def test_device_state_follows_the_typed_rollback_outcome(tmp_path):
    slot = _slot(tmp_path)
    assert slot.state()[0] == "idle"
    assert slot.job_finished("succeeded", A, None, "t1", "j1")["sha256"] == A
    assert slot.state()[0] == "running"
    # a failure that never touched the device: still running A, the job's error kept
    assert slot.job_finished("failed", B, _failure("transport_broken", needed=False),
                             "t2", "j2") is None
    assert slot.state()[0] == "running" and slot.last_error["code"] == "transport_broken"
    # a verified rollback to A (a 16-hex prefix from a device line is enough)
    slot.job_finished("failed", B, _failure("alloc_failed", attempted=True, verified=True,
                                            running_sha256=A[:16]), "t3", "j3")
    assert slot.state()[0] == "running" and slot.model["sha256"] == A
    # a rollback that failed: nothing verified runs
    slot.job_finished("failed", B, _failure("boot_silent", attempted=True), "t4", "j4")
    assert slot.state()[0] == "failed"
    # a later failure that never touched the device does not make it look fine
    slot.job_finished("failed", B, _failure("model_corrupt", needed=False), "t5", "j5")
    assert slot.state()[0] == "failed" and slot.last_error["code"] == "model_corrupt"
    # cancelled after the new model was verified: the device runs B, and says so
    new = slot.job_finished("cancelled", B, {"code": "cancelled", "message": "c",
                                             "class": "input", "detail": _failure(
                                                 "cancelled", needed=False, verified=True,
                                                 running_sha256=B)["detail"]}, "t6", "j6")
    assert new["sha256"] == B and slot.state()[0] == "running"
    # interrupted by a restart: no outcome, so not known to run anything verified
    slot.job_finished("interrupted", A, {"code": "interrupted", "message": "i",
                                         "class": "infrastructure", "detail": {}}, "t7", "j7")
    assert slot.state()[0] == "failed"


def test_job_error_link_error_and_health_never_overwrite_each_other(tmp_path):
    from hal.driver import Health
    from hal.errors import make_error

    slot = _slot(tmp_path)
    slot.job_finished("succeeded", A, None, "t1", "j1")
    slot.job_finished("failed", B, _failure("transport_broken", needed=False), "t2", "j2")
    slot.on_link_error(make_error("transport_broken", "ssh down"))
    slot.on_health(Health("crashed", "runner gone", exit_code=137, stderr_tail="Killed"))
    dev_state, reason = slot.state()
    assert dev_state == "crashed" and "runner gone" in reason
    slot.on_link_ok()  # the link is back: only the link error goes
    assert slot.link_error is None and slot.last_error["code"] == "transport_broken"
    assert slot.health["exit_code"] == 137
    slot.on_health(Health("ok", "runs", restarts=1))
    assert slot.state()[0] == "running" and slot.last_error["code"] == "transport_broken"


def test_restore_replays_recent_jobs_oldest_first(tmp_path):
    slot = _slot(tmp_path)
    jobs = [  # newest first, as the store lists them
        {"id": "j3", "state": "failed", "model_sha256": B, "finished_at": "t3",
         "error": _failure("model_corrupt", needed=False)},
        {"id": "j2", "state": "failed", "model_sha256": B, "finished_at": "t2",
         "error": _failure("boot_silent", attempted=True)},
        {"id": "j1", "state": "succeeded", "model_sha256": A, "finished_at": "t1",
         "error": None},
    ]
    slot.restore({"sha256": A, "since": "t1", "job_id": "j1"}, jobs)
    assert slot.state()[0] == "failed" and slot.last_error["code"] == "model_corrupt"
    assert slot.model["sha256"] == A
