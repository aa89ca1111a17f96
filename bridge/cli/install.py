"""``tinyml-bridge install``: send a model to a device through the bridge and follow the job."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from bridge.cli.common import (
    CONNECTION_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Invocation,
    bridge_command,
)
from hal.errors import InputError

# Refuse to even read absurd files; the bridge enforces the real limit (413).
MAX_MODEL_FILE_BYTES = 64 * 1024 * 1024
MAX_VECTORS_FILE_BYTES = 16 * 1024 * 1024
SPINNER = "|/-\\"


def parse_labels(value: str | None) -> list[str] | None:
    """``"yes,no,unknown"`` -> labels; empty names are a usage error."""
    if value is None:
        return None
    labels = [part.strip() for part in value.split(",")]
    if not labels or any(not label for label in labels):
        raise click.BadParameter("give comma-separated non-empty names, e.g. yes,no,unknown",
                                 param_hint="--labels")
    return labels


def load_vectors(path: Path) -> tuple[list[list[float]], list[str]]:
    """Input vectors from a JSON file: a list of lists of numbers, an object with
    ``input_vectors``, or a sample model's description (``reference[].input``, whose
    ``labels`` come along). Returns ``(vectors, labels_in_file)``."""
    hint = "--vectors"
    try:
        if path.stat().st_size > MAX_VECTORS_FILE_BYTES:
            raise click.BadParameter(f"{path} is larger than {MAX_VECTORS_FILE_BYTES} bytes",
                                     param_hint=hint)
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=hint) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path} is not JSON: {exc}", param_hint=hint) from None
    labels: list[str] = []
    if isinstance(data, dict):
        if isinstance(data.get("labels"), list):
            labels = [str(x) for x in data["labels"]]
        if "input_vectors" in data:
            data = data["input_vectors"]
        elif isinstance(data.get("reference"), list):
            data = [r.get("input") if isinstance(r, dict) else None for r in data["reference"]]
    if not isinstance(data, list) or not data:
        raise click.BadParameter(f"{path} must hold a non-empty list of input vectors "
                                 "(lists of numbers)", param_hint=hint)
    vectors = []
    for i, vec in enumerate(data):
        if not isinstance(vec, list) or not vec or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in vec
        ):
            raise click.BadParameter(f"vector {i} of {path} is not a non-empty list of finite "
                                     "numbers", param_hint=hint)
        vectors.append([float(v) for v in vec])
    return vectors, labels


def read_model(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise InputError("model_too_large", f"{path} is {size:,} bytes; no bridge accepts more "
                         f"than {MAX_MODEL_FILE_BYTES:,}", size_bytes=size,
                         max_bytes=MAX_MODEL_FILE_BYTES)
    return path.read_bytes()


class ProgressDisplay:
    """Shows a job's steps as they happen: on a terminal a redrawn line with a spinner for the
    running step and a permanent line per finished step; otherwise plain lines only."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._printed: set[tuple[int, str]] = set()
        self._started_seen: dict[int, float] = {}
        self._spin = 0
        self._live = False
        self._last_state: str | None = None

    def _clear(self) -> None:
        if self._live:
            sys.stdout.write("\r\x1b[K")
            self._live = False

    def update(self, job: dict[str, Any]) -> None:
        from bridge.cli.render import render_step, state

        now = time.monotonic()
        st = job.get("state")
        if st != self._last_state and st in ("queued",):
            self._clear()
            click.echo(f"  job {job.get('id')} is {state(st)}")
        self._last_state = st
        running: tuple[int, dict] | None = None
        for i, step in enumerate(job.get("steps") or []):
            status = step.get("status")
            if status == "started":
                self._started_seen.setdefault(i, now)
                running = (i, step)
                if not self.tty and (i, "started") not in self._printed:
                    self._printed.add((i, "started"))
                    click.echo(render_step(step))
                continue
            if (i, "final") in self._printed:
                continue
            self._printed.add((i, "final"))
            self._clear()
            click.echo(render_step(step))
        if self.tty:
            self._clear()
            if running is not None and st not in ("succeeded", "failed", "cancelled",
                                                  "interrupted"):
                i, step = running
                self._spin = (self._spin + 1) % len(SPINNER)
                line = render_step(step, elapsed=now - self._started_seen[i],
                                   mark=f"{SPINNER[self._spin]}   ")
                sys.stdout.write(line)
                sys.stdout.flush()
                self._live = True

    def finish(self) -> None:
        self._clear()
        sys.stdout.flush()


@click.command(
    epilog=CONNECTION_HELP,
    help="""Install MODEL (a .tflite file) on DEVICE and follow the job step by step
(validate, fit check, render, compile, fit check of the build, upload, verify boot).

Success means the device booted the new model and announced its hash; every other outcome
is a classified failure (exit 1) with the numbers that explain it.

\b
Examples:
  tinyml-bridge install nano-1 model.tflite --labels yes,no,unknown
  tinyml-bridge install nano-1 samples/models/sine_int8.tflite \\
      --vectors samples/models/sine_int8.json
  tinyml-bridge install pi-kitchen model.tflite --boot-deadline 60
  tinyml-bridge install nano-1 model.tflite --no-wait --json   (print the job, return)

\b
--vectors FILE.json holds input vectors in the model's real units: a list of lists of
numbers, {"input_vectors": [...]}, or a sample model description (reference[].input; its
"labels" are used when --labels is not given).
""",
)
@click.argument("device")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", metavar="A,B,...", help="Class names, in output order.")
@click.option("--vectors", "vectors_file", metavar="FILE.json",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Input vectors the device cycles through.")
@click.option("--arena", type=click.IntRange(1, 16 * 1024 * 1024), metavar="BYTES",
              help="Tensor arena size instead of the estimate plus margin.")
@click.option("--boot-deadline", type=click.FloatRange(0.1, 3600), metavar="SECONDS",
              help="How long to wait for the boot line (default: the bridge's, 20 s).")
@click.option("--input-source", metavar="NAME",
              help="Input source the driver supports (vectors, camera, ...).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Follow the job until it ends, or print it and return.")
@click.option("--wait-timeout", type=click.FloatRange(1, 24 * 3600), default=900,
              show_default=True, metavar="SECONDS",
              help="Give up following after this long (the job keeps running).")
@bridge_command
def install(
    inv: Invocation,
    device: str,
    model: Path,
    labels: str | None,
    vectors_file: Path | None,
    arena: int | None,
    boot_deadline: float | None,
    input_source: str | None,
    wait: bool,
    wait_timeout: float,
) -> int:
    from bridge.cli.render import fmt_bytes, render_outcome

    label_list = parse_labels(labels)
    vectors: list[list[float]] | None = None
    if vectors_file is not None:
        vectors, file_labels = load_vectors(vectors_file)
        if label_list is None and file_labels:
            label_list = file_labels
    data = read_model(model)
    sha = hashlib.sha256(data).hexdigest()
    tty = sys.stdout.isatty() and not inv.as_json

    with inv.client() as client:
        job = client.install(device, data, labels=label_list, input_vectors=vectors,
                             arena_bytes=arena, boot_deadline_s=boot_deadline,
                             input_source=input_source)
        job_id = job["id"]
        if not wait:
            if inv.as_json:
                inv.emit_json(job)
            else:
                click.echo(f"job {job_id} accepted: installing {model.name} on {device}\n"
                           f"follow it with: tinyml-bridge jobs {job_id}")
            return 0
        display = None
        if not inv.as_json:
            click.echo(f"installing {model.name} ({fmt_bytes(len(data))}, sha256 {sha[:16]}) "
                       f"on {device}: job {job_id}")
            display = ProgressDisplay(tty)
        try:
            job = client.wait_job(job_id, timeout=wait_timeout, poll_s=0.15 if tty else 0.25,
                                  on_update=display.update if display else None)
        except KeyboardInterrupt:
            if display:
                display.finish()
            click.echo(f"\nstopped following; job {job_id} keeps running on the bridge "
                       f"(cancel it with: tinyml-bridge cancel {job_id})", err=True)
            return EXIT_INTERRUPTED
        finally:
            if display:
                display.finish()

    if job.get("state") == "succeeded":
        if inv.as_json:
            inv.emit_json(job)
        else:
            click.echo(render_outcome(job))
        return 0
    if inv.as_json:
        err = job.get("error") or {"code": "internal", "message": f"job {job.get('state')}"}
        inv.emit_json({**err, "job": job})
    else:
        click.echo(render_outcome(job), err=False)
    return EXIT_FAILED
