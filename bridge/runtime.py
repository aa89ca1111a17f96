"""What the HTTP layer needs at run time: config, state, devices, jobs, limits, stop flag."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from bridge.config import BridgeConfig
from bridge.jobs import JobManager
from bridge.registry import DeviceRegistry
from bridge.state import StateStore
from bridge.streams import StreamLimiter, utc_now
from hal.driver import get_driver_class
from hal.errors import make_error


class Runtime:
    """What the HTTP layer needs: config, state, devices, jobs, and the stop flag."""

    def __init__(self, config: BridgeConfig, registry: DeviceRegistry | None = None) -> None:
        self.config = config
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.streams = StreamLimiter(config.server.max_streams)
        self.waits = StreamLimiter(config.server.max_waits)
        store = registry.store if registry is not None else None
        self.store = store or StateStore(config.state_dir, history=config.jobs.history)
        # Jobs cut off by the last run are marked interrupted before anything reads history.
        self.store.mark_interrupted(utc_now())
        if registry is None:
            registry = DeviceRegistry(config, self.store)
            registry.start()
        elif registry.store is None:
            registry.store = self.store
        self.registry = registry
        self.jobs = JobManager(registry, self.store, timeout_s=config.jobs.timeout_s,
                               max_wait_s=config.jobs.max_wait_s)
        self._tools: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tools_lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def long_poll(self) -> Iterator[None]:
        """Hold one of ``[server] max_waits`` long-poll slots; 503 ``unavailable`` when all
        are taken (a waiting request holds a worker thread)."""
        if not self.waits.acquire():
            raise make_error("unavailable", f"too many requests waiting for jobs "
                             f"({self.waits.limit}); retry later or poll without ?wait",
                             limit=self.waits.limit, retry_after_s=2)
        try:
            yield
        finally:
            self.waits.release()

    def driver_tools(self, ttl_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """``check_tools`` of each driver in use, cached for ``ttl_s`` (it may run tools)."""
        out = {}
        now = time.monotonic()
        for name in self.registry.driver_names():
            with self._tools_lock:
                cached = self._tools.get(name)
            if cached is not None and now - cached[0] < ttl_s:
                out[name] = cached[1]
                continue
            try:
                result = dict(get_driver_class(name).check_tools(self.registry.context))
                result.setdefault("available", False)
            except Exception as exc:  # a driver whose module cannot load is "unavailable"
                result = {"available": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            result = json.loads(json.dumps(result, default=str))
            with self._tools_lock:
                self._tools[name] = (now, result)
            out[name] = result
        return out

    def close(self, grace_s: float | None = None) -> None:
        """Stop: cancel jobs (waiting up to ``grace_s``), end streams, release devices."""
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        self.jobs.shutdown(self.config.server.shutdown_grace_s if grace_s is None else grace_s)
        self.registry.close()
        self.store.close()
