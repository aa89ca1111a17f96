"""The verified-image store: the last build output that booted verified on one device, kept
for rollbacks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class VerifiedStore:
    """The last build output that booted *verified* on one device, kept so that a new
    firmware which does not run (``alloc_failed``, ``boot_silent``) can be replaced by the
    previous working one with the same ``arduino-cli upload --input-dir``.

    Layout: ``<device_dir>/verified/{<sketch>.ino.bin, ..., verified.json}``. The record
    names the model (``model_sha256``), ``arena_bytes``, ``template_version``, ``fqbn`` and
    the ``.bin``'s own sha256 (a damaged copy is never uploaded). It is replaced as a whole
    (a new folder renamed into place) and only after a verified boot."""

    RECORD = "verified.json"

    def __init__(self, device_dir: Path) -> None:
        self.dir = Path(device_dir) / "verified"
        self._old = Path(device_dir) / "verified.old"

    def _current(self) -> Path:
        # A crash between the two renames of save() leaves only the old folder: still valid.
        return self.dir if self.dir.exists() or not self._old.exists() else self._old

    def load_record(self) -> dict[str, Any] | None:
        """The last verified image's record without checking the image (cheap), or None."""
        try:
            record = json.loads((self._current() / self.RECORD).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def load(self) -> tuple[Path, dict[str, Any]] | None:
        """``(input_dir, record)`` of the last verified image, or None when there is none
        (first install on this device). Raises ``ValueError`` naming the damage when it is
        there but incomplete or altered: such an image is never uploaded."""
        directory = self._current()
        try:
            record = json.loads((directory / self.RECORD).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"its record {directory / self.RECORD} is unreadable: "
                             f"{exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("model_sha256"), str):
            raise ValueError(f"its record {directory / self.RECORD} names no model")
        bins = sorted(directory.glob("*.ino.bin"))
        if len(bins) != 1:
            raise ValueError(f"{directory} holds {len(bins)} .ino.bin images, not one")
        try:
            actual = _file_sha256(bins[0])
        except OSError as exc:
            raise ValueError(f"{bins[0]} is unreadable: {exc}") from None
        if actual != record.get("image_sha256"):
            raise ValueError(f"{bins[0]} does not match its recorded sha256 "
                             f"({actual[:16]} != {str(record.get('image_sha256'))[:16]})")
        return directory, record

    def save(self, files: Iterable[Path], record: dict[str, Any]) -> None:
        """Keep ``files`` (a build's outputs, one ``.bin`` among them) as the verified image
        described by ``record``. Raises OSError / ValueError on failure."""
        files = list(files)
        bins = [f for f in files if f.name.endswith(".ino.bin")]
        if len(bins) != 1:
            raise ValueError(f"expected one .ino.bin among the build outputs, got {len(bins)}")
        parent = self.dir.parent
        tmp = parent / f".verified.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            full = {**record, "image": bins[0].name,
                    "image_sha256": _file_sha256(tmp / bins[0].name)}
            (tmp / self.RECORD).write_text(json.dumps(full, sort_keys=True))
            shutil.rmtree(self._old, ignore_errors=True)
            if self.dir.exists():
                os.replace(self.dir, self._old)
            os.replace(tmp, self.dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self._old, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
