"""Deploying files to the target: a content-addressed directory per model,
``<workdir>/models/<sha256>/``, filled through a temporary directory whose model hash is
verified on the target before one atomic rename; ``current`` switched by an atomic symlink
rename; old deployments pruned keep-last-N.

The files travel as one tar stream over one exec channel (``tar -x`` on the target), in
chunks that check the deadline: one round trip for upload + hash check + rename, and faster
than SFTP's request/acknowledge packets (see bench/bench_rpi.py).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import hal.protocol
from hal.deadline import Deadline
from hal.errors import DeviceError, FitError, InfraError
from hal.rpi.ssh import SshSession, quote_args
from hal.rpi.supervise import Layout

log = logging.getLogger(__name__)

EXIT_HASH_MISMATCH = 65
SMALL_FILES = ("runner.py", "protocol.py", "supervise.sh", "settings.json")


def runner_files(settings: dict) -> dict[str, bytes]:
    """The small files of a deployment, as bytes: the runner, the protocol module it imports,
    the supervisor script and the settings (canonical JSON, so equal settings compare equal)."""
    tmpl = resources.files("firmware_templates") / "rpi_runner"
    return {
        "runner.py": (tmpl / "runner.py").read_bytes(),
        "supervise.sh": (tmpl / "supervise.sh").read_bytes(),
        "protocol.py": Path(hal.protocol.__file__).read_bytes(),
        "settings.json": json.dumps(settings, sort_keys=True, indent=1).encode() + b"\n",
    }


def make_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (models barely compress; CPU on a Pi is dear)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class UploadResult:
    uploaded_bytes: int
    files: tuple[str, ...]
    seconds: float


def _classify_write_failure(res, layout: Layout, what: str, **numbers) -> None:
    err = res.err_text(800)
    low = err.lower()
    if res.status == EXIT_HASH_MISMATCH:
        raise InfraError("transport_broken", f"{what}: the model arrived corrupted "
                         f"({err.strip()})", **numbers)
    if "no space left" in low or "disk quota" in low:
        raise FitError("fit_disk", f"{what}: the target ran out of disk in "
                       f"{layout.workdir}: {err.strip()}", workdir=layout.workdir, **numbers)
    if "permission denied" in low or "read-only file system" in low:
        raise DeviceError("target_not_writable", f"{what}: {err.strip()}",
                          workdir=layout.workdir, **numbers)
    raise InfraError("tool_failed", f"{what} failed with status {res.status}: {err.strip()}",
                     status=res.status, stderr_tail=err, **numbers)


def upload_deployment(session: SshSession, layout: Layout, sha256: str, model: bytes,
                      files: dict[str, bytes], deadline: Deadline,
                      on_progress: Callable[[int, int], None] | None = None) -> UploadResult:
    """Upload model + small files to a temporary dir, verify the model's hash there, rename
    it to ``models/<sha256>`` (replacing an incomplete copy). Nothing else is touched."""
    token = secrets.token_hex(4)
    blob = make_tar({"model.tflite": model, **files})
    q = quote_args
    tmp = f"{layout.models}/.tmp-{sha256[:16]}-{token}"
    final = layout.deployment(sha256)
    trash = f"{layout.models}/.trash-{token}"
    script = (
        f"T={q([tmp])}\nF={q([final])}\nX={q([trash])}\n"
        "trap 'rm -rf \"$T\"' EXIT\n"
        'mkdir -p "$T" || exit 1\n'
        'tar -x -o -f - -C "$T" || exit 1\n'
        'S=$(sha256sum "$T/model.tflite" | cut -d" " -f1)\n'
        f'if [ "$S" != {q([sha256])} ]; then echo "hash on target $S" >&2; '
        f"exit {EXIT_HASH_MISMATCH}; fi\n"
        'if [ -e "$F" ]; then mv -T "$F" "$X" || exit 1; fi\n'
        'mv -T "$T" "$F" || exit 1\n'
        'rm -rf "$X"\n'
    )
    res = session.run(script, deadline, stdin=blob, what="upload", on_progress=on_progress)
    if not res.ok:
        _classify_write_failure(res, layout, "upload", model_bytes=len(model),
                                upload_bytes=len(blob))
    return UploadResult(len(blob), ("model.tflite", *files), res.seconds)


def update_small_files(session: SshSession, layout: Layout, sha256: str,
                       files: dict[str, bytes], deadline: Deadline) -> UploadResult:
    """Replace changed small files of an existing deployment, keeping ``<name>.prev`` copies
    until the install is verified (:func:`finish_small_files`)."""
    token = secrets.token_hex(4)
    blob = make_tar(files)
    final = layout.deployment(sha256)
    names = " ".join(quote_args([n]) for n in files)
    script = (
        f"F={quote_args([final])}\nT=\"$F/.update-{token}\"\n"
        "trap 'rm -rf \"$T\"' EXIT\n"
        'mkdir -p "$T" && tar -x -o -f - -C "$T" || exit 1\n'
        f"for f in {names}; do\n"
        '  if [ -f "$F/$f" ]; then cp -p "$F/$f" "$F/$f.prev" || exit 1; fi\n'
        '  mv -f "$T/$f" "$F/$f" || exit 1\n'
        "done\n"
    )
    res = session.run(script, deadline, stdin=blob, what="update runner files")
    if not res.ok:
        _classify_write_failure(res, layout, "update runner files", upload_bytes=len(blob))
    return UploadResult(len(blob), tuple(files), res.seconds)


def finish_small_files(session: SshSession, layout: Layout, sha256: str, names: tuple[str, ...],
                       *, restore: bool, deadline: Deadline) -> None:
    """After the verdict: drop the ``.prev`` copies (verified) or put them back (failed)."""
    if not names:
        return
    final = quote_args([layout.deployment(sha256)])
    listed = " ".join(quote_args([n]) for n in names)
    action = ('[ -f "$F/$f.prev" ] && mv -f "$F/$f.prev" "$F/$f"' if restore
              else 'rm -f "$F/$f.prev"')
    session.run(f"F={final}\nfor f in {listed}; do {action}; done; true", deadline,
                what="finish runner files")


def activate(session: SshSession, layout: Layout, sha256: str, keep: int,
             deadline: Deadline) -> list[str]:
    """Point ``current`` at the verified deployment (atomic rename of a symlink), mark it
    deployed, and prune: keep the ``keep`` most recently deployed, never ``current``; remove
    leftovers of interrupted uploads older than 10 minutes. Returns the pruned hashes."""
    q = quote_args
    script = (
        f"W={q([layout.workdir])}\nM={q([layout.models])}\nSHA={q([sha256])}\n"
        'ln -sfn "models/$SHA" "$W/current.new" && mv -Tf "$W/current.new" "$W/current" '
        "|| exit 1\n"
        'touch "$M/$SHA/.deployed"\n'
        'cd "$M" || exit 0\n'
        "n=0\n"
        # Newest first by the .deployed marker (else the directory itself); hex names only.
        "for d in $(ls -1td -- $(for x in */; do x=${x%/}; "
        'if [ -f "$x/.deployed" ]; then echo "$x/.deployed"; else echo "$x"; fi; done) '
        "2>/dev/null); do\n"
        "  d=${d%/.deployed}\n"
        '  case "$d" in *[!0-9a-f]*) continue ;; esac\n'
        "  n=$((n+1))\n"
        f'  if [ $n -gt {int(keep)} ] && [ "$d" != "$SHA" ]; then rm -rf -- "$d" && '
        'echo "pruned $d"; fi\n'
        "done\n"
        "find . -maxdepth 1 \\( -name '.tmp-*' -o -name '.trash-*' \\) -mmin +10 "
        "-exec rm -rf {} + 2>/dev/null\n"
        "true\n"
    )
    res = session.run(script, deadline, what="activate")
    if not res.ok:
        _classify_write_failure(res, layout, "switching current")
    return [row.split()[1] for row in res.text().splitlines() if row.startswith("pruned ")]
