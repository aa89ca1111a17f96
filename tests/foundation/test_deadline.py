"""The deadline type: expiry, children, cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from hal.deadline import Deadline
from hal.errors import Cancelled, InfraError


def test_child_never_outlives_parent():
    parent = Deadline(0.2)
    child = parent.sub(10.0)
    assert child.at == parent.at  # clamped to the parent's absolute end
    assert parent.sub(0.05).at < parent.at


def test_expired_deadline_raises_timeout_naming_what():
    d = Deadline(0.0, what="compile")
    with pytest.raises(InfraError) as info:
        d.check()
    assert info.value.code == "timeout" and "compile" in info.value.message
    assert info.value.retryable


def test_cancel_reaches_children_and_wakes_waiters():
    parent = Deadline(30.0)
    child = parent.sub(30.0)
    woke = []
    t = threading.Thread(target=lambda: woke.append(child.wait(10.0)))
    t.start()
    time.sleep(0.05)
    parent.cancel()
    t.join(2.0)
    assert woke == [True]
    with pytest.raises(Cancelled):
        child.check()


def test_never_does_not_expire_but_can_be_cancelled():
    d = Deadline.never()
    assert not d.expired and d.remaining() == float("inf")
    assert d.poll_timeout(0.5) == 0.5
    d.cancel()
    with pytest.raises(Cancelled):
        d.check()
