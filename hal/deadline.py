"""The one deadline type: an absolute point in monotonic time plus a cancel flag.

A job hands one :class:`Deadline` down to every step; a step that needs a tighter bound
takes ``deadline.sub(seconds)``, which never outlives its parent and shares its cancel flag,
so cancelling a job reaches the subprocess, serial read or SSH call running inside it.
"""

from __future__ import annotations

import math
import threading
import time

from hal.errors import Cancelled, InfraError


class Deadline:
    """An absolute deadline (``time.monotonic()`` based) with a shared cancel event."""

    __slots__ = ("_cancel", "_what", "at")

    def __init__(
        self,
        seconds: float | None,
        *,
        cancel: threading.Event | None = None,
        what: str = "operation",
    ) -> None:
        self.at = math.inf if seconds is None else time.monotonic() + max(0.0, seconds)
        self._cancel = cancel if cancel is not None else threading.Event()
        self._what = what

    @classmethod
    def never(cls) -> Deadline:
        """A deadline that never expires (still cancellable)."""
        return cls(None)

    def sub(self, seconds: float | None, what: str | None = None) -> Deadline:
        """A child deadline: at most ``seconds`` from now, never later than this one."""
        child = Deadline(seconds, cancel=self._cancel, what=what or self._what)
        child.at = min(child.at, self.at)
        return child

    @property
    def what(self) -> str:
        """What this deadline bounds, used in timeout messages."""
        return self._what

    @property
    def cancel_event(self) -> threading.Event:
        """The shared cancel flag; set it to cancel everything under this deadline."""
        return self._cancel

    def cancel(self) -> None:
        """Cancel every operation running under this deadline (or its children)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def remaining(self) -> float:
        """Seconds left (``inf`` for a deadline that never expires), never negative."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self) -> None:
        """Raise :class:`Cancelled` or a ``timeout`` :class:`InfraError` if due."""
        if self._cancel.is_set():
            raise Cancelled(f"{self._what} cancelled")
        if self.expired:
            raise self.timeout_error()

    def timeout_error(self, **detail: object) -> InfraError:
        """The error to raise when this deadline passes."""
        return InfraError("timeout", f"{self._what} did not finish within its deadline", **detail)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (bounded by the deadline); True if cancelled meanwhile."""
        return self._cancel.wait(min(seconds, self.remaining()))

    def poll_timeout(self, at_most: float) -> float:
        """A blocking-call timeout: ``at_most`` seconds, but never past the deadline."""
        return min(at_most, self.remaining())

    def __repr__(self) -> str:
        return f"Deadline({self._what!r}, remaining={self.remaining():.3f}s)"
