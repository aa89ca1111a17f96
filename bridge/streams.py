"""Observation buffers and the live-stream hub.

Each device has one :class:`DeviceStream`: a ring buffer of its most recent lines, each with a
bridge-assigned sequence number (1, 2, ... per bridge run), and any number of
:class:`Subscriber` queues. Publishing never blocks on a subscriber: each queue is bounded, and
a subscriber that does not keep up loses its *oldest* queued lines and is told how many
(``event: dropped``), so a slow client never slows the device or the other clients.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from hal.protocol import DeviceLine, to_dict


def utc_now() -> str:
    """ISO 8601 UTC timestamp with milliseconds, as used throughout the API."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One observed line as the API shows it; ``event`` is its pre-encoded SSE form, built
    once per line however many subscribers receive it."""

    seq: int
    at: str
    line: dict[str, Any]
    event: bytes = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "line": self.line}


def _entry(seq: int, line: DeviceLine) -> Entry:
    at = utc_now()
    data = to_dict(line)
    body = json.dumps({"seq": seq, "at": at, "line": data}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return Entry(seq, at, data, f"id: {seq}\nevent: line\ndata: {body}\n\n".encode())


def dropped_event(count: int) -> bytes:
    """The SSE event telling a subscriber it lost ``count`` lines."""
    return f'event: dropped\ndata: {{"count":{count}}}\n\n'.encode()


PING = b": ping\n\n"


class Subscriber:
    """A bounded queue of entries for one stream client."""

    def __init__(self, capacity: int) -> None:
        self._queue: deque[Entry] = deque()
        self._capacity = capacity
        self._dropped = 0
        self._cond = threading.Condition(threading.Lock())
        self.closed = False

    def offer(self, entry: Entry) -> None:
        """Queue ``entry``; when full, drop the oldest queued entry (never block)."""
        with self._cond:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(entry)
            self._cond.notify()

    def note_missed(self, count: int) -> None:
        """Lines the subscriber asked for that are no longer in the ring buffer."""
        if count > 0:
            with self._cond:
                self._dropped += count

    def close(self) -> None:
        """Wake the reader and make :meth:`take` return ``None`` once drained."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def take(self, timeout: float) -> tuple[list[Entry], int] | None:
        """Wait up to ``timeout`` s; return ``(entries, dropped_since_last_take)``, or None
        when closed and nothing is left."""
        with self._cond:
            if not self._queue and not self._dropped and not self.closed:
                self._cond.wait(timeout)
            if self.closed and not self._queue:
                return None
            entries = list(self._queue)
            self._queue.clear()
            dropped, self._dropped = self._dropped, 0
            return entries, dropped


class DeviceStream:
    """The ring buffer and subscribers of one device."""

    def __init__(self, device_id: str, capacity: int = 2000, queue_capacity: int = 1000) -> None:
        self.device_id = device_id
        self._ring: deque[Entry] = deque(maxlen=capacity)
        self._queue_capacity = queue_capacity
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, line: DeviceLine) -> Entry:
        """Append a line from the device and hand it to every subscriber."""
        with self._lock:
            self._seq += 1
            entry = _entry(self._seq, line)
            self._ring.append(entry)
            # Offer under the lock so resume (snapshot + subscribe) cannot miss or repeat a
            # line; offer() is O(1) and never blocks on the reader.
            for sub in self._subscribers:
                sub.offer(entry)
        return entry

    def recent(self, count: int) -> list[Entry]:
        """The last ``count`` entries, oldest first."""
        with self._lock:
            if count <= 0:
                return []
            return list(self._ring)[-count:]

    def latest(self, kind: str) -> Entry | None:
        """The newest entry whose line is of ``kind`` (e.g. ``"inference"``)."""
        with self._lock:
            for entry in reversed(self._ring):
                if entry.line.get("kind") == kind:
                    return entry
        return None

    def subscribe(self, since: int | None = None) -> Subscriber:
        """A new subscriber. With ``since``, the buffered lines after that sequence number are
        queued first; lines already gone from the buffer are reported as dropped."""
        sub = Subscriber(self._queue_capacity)
        with self._lock:
            if self._closed:
                sub.close()
                return sub
            if since is not None and 0 <= since < self._seq:
                backlog = [e for e in self._ring if e.seq > since]
                first = backlog[0].seq if backlog else self._seq + 1
                sub.note_missed(first - since - 1)
                for entry in backlog:
                    sub.offer(entry)
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)
        sub.close()

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        with self._lock:
            self._closed = True
            subs = list(self._subscribers)
            self._subscribers.clear()
        for sub in subs:
            sub.close()


class StreamLimiter:
    """Caps concurrent streams so they cannot take every server thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._active = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        if not self._sem.acquire(blocking=False):
            return False
        with self._lock:
            self._active += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1
        self._sem.release()

    @property
    def active(self) -> int:
        return self._active


def sse_events(stream: DeviceStream, sub: Subscriber, *, ping_s: float,
               disconnected: Any = None, stopping: threading.Event | None = None,
               poll_s: float = 1.0) -> Iterator[bytes]:
    """Yield SSE chunks for ``sub`` until the client disconnects, the bridge stops, or the
    stream is closed. ``disconnected`` is waitress's ``client_disconnected`` callable: it lets
    an idle stream notice a gone client within ``poll_s`` and free its thread."""
    import time

    yield b"retry: 2000\n\n"
    last_write = time.monotonic()
    try:
        while True:
            got = sub.take(poll_s)
            if got is None or (stopping is not None and stopping.is_set()):
                return
            entries, dropped = got
            chunks = []
            if dropped:
                chunks.append(dropped_event(dropped))
            chunks.extend(e.event for e in entries)
            now = time.monotonic()
            if not chunks and now - last_write >= ping_s:
                chunks.append(PING)
            if chunks:
                last_write = now
                yield b"".join(chunks)
            elif disconnected is not None and disconnected():
                return
    finally:
        stream.unsubscribe(sub)
