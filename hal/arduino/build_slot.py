"""The persistent build path per board, device and template version, with a record of the
last successful build, so an identical model, board and template is not compiled again and
only the model file changes between installs (arduino-cli's cache stays warm); finished builds
are shared between boards of one kind running one model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hal.arduino.cli_output import CompileResult, json_dict, json_list
from hal.deadline import Deadline

log = logging.getLogger(__name__)

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(name: str) -> threading.Lock:
    """The in-process lock paired with the build-sharing file lock ``name``."""
    with _process_locks_guard:
        return _process_locks.setdefault(name, threading.Lock())


class BuildSlot:
    """A persistent sketch + build directory for one board profile, device and template
    version, with a record of its last successful build.

    Layout: ``<root>/<board>/<device>/<template_version>/{<sketch_name>/, build/,
    last_build.json}``. Keeping the folder per device lets boards compile in parallel; keeping
    it across installs lets arduino-cli reuse every object file but the model's."""

    RECORD = "last_build.json"

    def __init__(
        self, root: Path, board: str, device_id: str, template_version: str, sketch_name: str
    ) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) or "_"
        self.dir = Path(root) / board / safe / re.sub(r"[^A-Za-z0-9_.-]", "_", template_version)
        self.sketch_dir = self.dir / sketch_name
        self.build_path = self.dir / "build"
        self.sketch_name = sketch_name
        self.sketch_dir.mkdir(parents=True, exist_ok=True)
        self.build_path.mkdir(parents=True, exist_ok=True)

    @property
    def binary(self) -> Path:
        """The image arduino-cli writes for the sketch."""
        return self.build_path / f"{self.sketch_name}.ino.bin"

    def sketch_digest(self) -> str:
        """sha256 over the sketch folder's files (names and bytes): any rendered change --
        labels, vectors, arena -- makes a different build."""
        h = hashlib.sha256()
        for path in sorted(p for p in self.sketch_dir.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(self.sketch_dir)).encode())
            h.update(b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
        return h.hexdigest()

    def _record_path(self) -> Path:
        return self.dir / self.RECORD

    def cached(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The last build's record if it was built from exactly ``key`` and its image is still
        there; else None."""
        try:
            record = json.loads(self._record_path().read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or not self.binary.exists():
            return None
        return record

    def invalidate(self) -> None:
        """Forget the last build (called before a compile starts, so that a compile killed
        half-way can never be mistaken for a finished one)."""
        with contextlib.suppress(FileNotFoundError):
            self._record_path().unlink()

    def save(self, key: dict[str, Any], result: CompileResult) -> None:
        """Record a successful build of ``key``."""
        record = {"key": key, "result": result.to_dict()}
        tmp = self._record_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, self._record_path())


    # -- sharing between devices ------------------------------------------------------
    # Boards of one kind running one model need one build: the first device to compile a key
    # publishes its image, the others (in parallel: after waiting on the key's lock) adopt it.

    SHARED_KEEP = 20  # newest shared builds kept per board and template

    def _shared_root(self) -> Path:
        # <root>/shared/<board>/<template>: outside every device's folder
        return self.dir.parents[2] / "shared" / self.dir.parents[1].name / self.dir.name

    @staticmethod
    def key_id(key: dict[str, Any]) -> str:
        """A short, stable name for a build key."""
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def _outputs(self, directory: Path) -> list[Path]:
        return sorted(p for p in directory.glob(f"{self.sketch_name}.ino.*") if p.is_file()
                      and not p.name.endswith(".tmp"))

    def outputs(self) -> list[Path]:
        """The build's output files (the ``.bin`` arduino-cli uploads, ``.elf``, ``.hex``...)."""
        return self._outputs(self.build_path)

    @contextlib.contextmanager
    def shared_lock(self, key: dict[str, Any], deadline: Deadline) -> Iterator[None]:
        """Hold the key's lock (a file lock, so other processes are excluded too), waiting
        within ``deadline``; raises timeout / cancelled like every wait."""
        root = self._shared_root()
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{self.key_id(key)}.lock"
        # Devices of one process (the bridge) queue on a thread lock, which hands over the
        # moment the compiling device lets go; the file lock (polled: flock cannot wait with
        # a deadline) then only ever waits for other processes.
        local = _process_lock(str(path))
        while not local.acquire(timeout=max(0.001, deadline.poll_timeout(0.05))):
            if deadline.cancelled or deadline.expired:
                deadline.check()
        try:
            with open(path, "a+b") as fh:
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline.wait(0.05) or deadline.expired:
                            deadline.check()
                try:
                    yield
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            local.release()

    def adopt_shared(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """Copy another device's finished build of ``key`` into this slot; its record, or
        None when there is none."""
        src = self._shared_root() / self.key_id(key)
        try:
            record = json.loads((src / self.RECORD).read_text())
        except (OSError, ValueError):
            return None
        files = self._outputs(src)
        if not isinstance(record, dict) or record.get("key") != key or not any(
                f.name.endswith(".bin") for f in files):
            return None
        self.invalidate()
        for f in files:
            tmp = self.build_path / f"{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, self.build_path / f.name)
        self.save(key, result_from_record(record))
        return record

    def publish(self, key: dict[str, Any]) -> None:
        """Offer this slot's build of ``key`` to other devices (never raises: sharing is an
        optimisation)."""
        try:
            root = self._shared_root()
            dest = root / self.key_id(key)
            tmp = root / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in self._outputs(self.build_path):
                shutil.copyfile(f, tmp / f.name)
            shutil.copyfile(self._record_path(), tmp / self.RECORD)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            entries = sorted((p for p in root.iterdir() if p.is_dir()
                              and not p.name.startswith(".")),
                             key=lambda p: p.stat().st_mtime, reverse=True)
            for old in entries[self.SHARED_KEEP:]:
                shutil.rmtree(old, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    (root / f"{old.name}.lock").unlink()
        except OSError as exc:
            log.warning("could not share build %s: %s", self.key_id(key), exc)


def result_from_record(record: dict[str, Any]) -> CompileResult:
    """Rebuild the :class:`CompileResult` stored by :meth:`BuildSlot.save`."""
    data = json_dict(record.get("result"))
    fields = CompileResult.__dataclass_fields__
    clean = {k: v for k, v in data.items() if k in fields}
    clean["used_libraries"] = tuple(json_list(clean.get("used_libraries")))
    clean.setdefault("success", True)
    return CompileResult(**clean)


