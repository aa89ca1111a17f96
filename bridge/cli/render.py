"""Human-readable rendering of the bridge's JSON (devices, jobs, device lines, health).

Pure functions from the API's dicts to text, so they are tested with recorded JSON. Colours go
through ``click.style``; ``click.echo`` strips them when the output is not a terminal.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import click

STATE_COLOURS = {
    "idle": None,
    "installing": "yellow",
    "running": "green",
    "failed": "red",
    "crashed": "red",
    "queued": "yellow",
    "succeeded": "green",
    "cancelled": "magenta",
    "interrupted": "red",
}
STEP_MARKS = {"done": "ok", "skipped": "skip", "failed": "FAIL", "started": ".."}
STEP_COLOURS = {"done": "green", "skipped": "cyan", "failed": "red", "started": "yellow"}


# --------------------------------------------------------------------------------- basics


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from the API, as an aware datetime (None if absent or bad)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def clock(value: Any) -> str:
    """``HH:MM:SS.mmm`` in local time, or ``--:--:--`` when unknown."""
    parsed = parse_time(value)
    if parsed is None:
        return "--:--:--.---"
    return parsed.astimezone().strftime("%H:%M:%S.%f")[:-3]


def when(value: Any) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time, or ``-``."""
    parsed = parse_time(value)
    return "-" if parsed is None else parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def seconds_between(start: Any, end: Any) -> float | None:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 600:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def fmt_bytes(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"{value:,} B"


# Integers that are names, not quantities: never grouped ("port 38011", not "38,011").
_IDENTIFIER_KEYS = ("port", "pid", "uid", "gid", "status", "code", "line", "seq", "index",
                    "job", "id", "year")


def _is_identifier(key: str | None) -> bool:
    if not key:
        return False
    words = key.lower().replace("-", "_").split("_")
    return any(w in _IDENTIFIER_KEYS or w.endswith("port") or w.endswith("pid")
               for w in words)


def fmt_number(value: Any, key: str | None = None) -> str:
    """A value for display; large quantities get thousands separators, identifiers (ports,
    pids, exit statuses, line numbers: told by ``key``) never do."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, int):
        grouped = abs(value) >= 10000 and not _is_identifier(key)
        return f"{value:,}" if grouped else str(value)
    return str(value)


def short_sha(value: Any) -> str:
    return str(value)[:16] if value else "-"


def state(text: str) -> str:
    return click.style(text, fg=STATE_COLOURS.get(text),
                       bold=text in ("failed", "running", "crashed"))


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned table; widths ignore ANSI styling."""
    if not rows:
        return "  ".join(headers)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(click.unstyle(cell)))
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [c + " " * (w - len(click.unstyle(c))) for c, w in zip(row, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def detail_items(detail: Any, skip: tuple[str, ...] = (), limit: int = 6,
                 numbers_only: bool = False) -> str:
    """``k=v`` pairs of a detail dict's scalar values (numbers explain failures)."""
    if not isinstance(detail, dict):
        return ""
    parts = []
    for key, value in detail.items():
        if key in skip or isinstance(value, dict | list) or value is None:
            continue
        if numbers_only and not isinstance(value, int | float | bool):
            continue
        text = fmt_number(value, key)
        if len(text) > 60:
            text = text[:57] + "..."
        parts.append(f"{key}={text}")
        if len(parts) >= limit:
            break
    return " ".join(parts)


# --------------------------------------------------------------------------------- errors


def render_error(err: dict[str, Any]) -> str:
    """A classified failure: code, class and message first, then every number and the fix."""
    code = err.get("code", "internal")
    klass = err.get("class", "")
    head = click.style(f"error {code}", fg="red", bold=True)
    lines = [f"{head}{f' ({klass})' if klass else ''}: {err.get('message', '')}"]
    detail = err.get("detail") or {}
    if isinstance(detail, dict):
        fix = detail.get("fix")
        for key, value in detail.items():
            if key in ("fix", "http_status"):
                continue
            if key == "rollback" and isinstance(value, dict):
                lines.append(f"  rollback: {render_rollback(value)}")
                continue
            if isinstance(value, dict):
                if key == "running_job" or "id" in value:
                    value = value.get("id", value)
                else:
                    value = ", ".join(f"{k}={fmt_number(v, k)}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value[:10]) + (" ..." if len(value) > 10
                                                                 else "")
            lines.append(f"  {key}: {fmt_number(value, key)}")
        if fix:
            lines.append(click.style(f"  fix: {fix}", fg="cyan"))
    return "\n".join(lines)


def render_rollback(rollback: dict[str, Any]) -> str:
    """What the device runs after a failed install: the typed rollback outcome
    (``hal.driver.RollbackOutcome``), read the same way for every driver."""
    sha = str(rollback.get("running_sha256") or "")[:16]
    reason = str(rollback.get("reason") or "")
    if rollback.get("verified") and rollback.get("attempted"):
        return f"done: {reason or f'the previously verified model {sha} runs again'}"
    if rollback.get("verified"):
        return f"not needed: {reason or f'the device still runs {sha}'}"
    if not rollback.get("needed", True):
        return f"not needed: {reason or 'the device was not changed'}"
    verb = "failed" if rollback.get("attempted") else "not done"
    return click.style(f"{verb}: {reason or 'no reason given'}", fg="yellow")


# -------------------------------------------------------------------------------- devices


def device_note(d: dict[str, Any]) -> str:
    """The one-line note of a device listing: the job, or why it is not simply running."""
    st = str(d.get("state", "?"))
    if d.get("job_id"):
        return f"job {d['job_id']}"
    link, health, err = d.get("link_error"), d.get("health") or {}, d.get("last_error")
    if st == "crashed":
        text = str(d.get("state_reason") or health.get("message") or "crashed")
        if health.get("exit_code") is not None:
            text = f"exit {health['exit_code']}: {text}"
        return click.style(text[:90], fg="red")
    if st == "failed" and err:
        return click.style(f"{err.get('code')}: {err.get('message', '')}"[:90], fg="red")
    if link:
        return click.style(f"link: {link.get('code')}: {link.get('message', '')}"[:90],
                           fg="yellow")
    if st == "failed":
        return click.style(str(d.get("state_reason") or "the last install failed")[:90],
                           fg="red")
    return ""


def render_devices(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no devices (attach a board, or declare [[devices]] in the bridge config)"
    rows = []
    for d in devices:
        st = str(d.get("state", "?"))
        cell = state(st)
        if not d.get("connected", True):
            cell += click.style(" (disconnected)", fg="red")
        model = d.get("model") or {}
        if model:
            running = f"{short_sha(model.get('sha256'))} since {when(model.get('since'))}"
        else:
            running = "-"
        note = device_note(d)
        rows.append([str(d.get("id", "?")), str(d.get("driver", "")), str(d.get("board", "")),
                     str(d.get("address", "")), cell, running, note])
    return table(["ID", "DRIVER", "BOARD", "ADDRESS", "STATE", "VERIFIED MODEL", "NOTE"], rows)


def render_device_detail(d: dict[str, Any]) -> str:
    """One device in full: why it is in its state, then the job error, the link error, the
    runner's health and the rollback, each on its own (they never overwrite each other)."""
    out = [f"state: {state(str(d.get('state', '?')))}: {d.get('state_reason', '')}"]
    if d.get("last_error"):
        out += ["", "last job error:", render_error(d["last_error"])]
    if d.get("rollback"):
        out.append(f"  rollback: {render_rollback(d['rollback'])}")
    if d.get("link_error"):
        out += ["", "link error:", render_error(d["link_error"])]
    health = d.get("health")
    if health:
        line = f"health: {health.get('state')}: {health.get('message', '')}"
        if health.get("restarts"):
            line += f" (restarts {health['restarts']})"
        if health.get("exit_code") is not None:
            line += f" (exit status {health['exit_code']})"
        out += ["", line]
        if health.get("stderr_tail"):
            out.append(click.style("  stderr: " + str(health["stderr_tail"])[-600:]
                                   .replace("\n", "\n          "), dim=True))
    return "\n".join(out)


# ----------------------------------------------------------------------------------- jobs


def job_seconds(job: dict[str, Any]) -> float | None:
    return seconds_between(job.get("started_at") or job.get("created_at"),
                           job.get("finished_at"))


def render_jobs(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs"
    rows = []
    for j in jobs:
        err = j.get("error") or {}
        outcome = ""
        if err:
            outcome = f"{err.get('code')}: {err.get('message', '')}"[:70]
        elif j.get("state") == "succeeded":
            outcome = "verified boot"
        rows.append([str(j.get("id", "?")), str(j.get("device_id", "")),
                     state(str(j.get("state", "?"))), when(j.get("created_at")),
                     fmt_seconds(job_seconds(j)), short_sha(j.get("model_sha256")), outcome])
    return table(["JOB", "DEVICE", "STATE", "CREATED", "TOOK", "MODEL", "OUTCOME"], rows)


def step_seconds(step: dict[str, Any]) -> float | None:
    detail = step.get("detail") or {}
    value = detail.get("seconds") if isinstance(detail, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return seconds_between(step.get("started_at"), step.get("finished_at"))


def render_step(step: dict[str, Any], elapsed: float | None = None,
                mark: str | None = None) -> str:
    """One step line: mark, name, seconds, and what explains it (reason, numbers, error)."""
    status = str(step.get("status", "?"))
    mark = click.style(f"{mark or STEP_MARKS.get(status, status):<4}",
                       fg=STEP_COLOURS.get(status), bold=status == "failed")
    name = str(step.get("name", "?"))
    detail = step.get("detail") or {}
    if status == "started":
        if elapsed is None:
            return f"  {mark} {name:<16} started"
        return f"  {mark} {name:<16} {fmt_seconds(elapsed):>8}"
    if status == "skipped":
        reason = detail.get("reason", "") if isinstance(detail, dict) else ""
        return f"  {mark} {name:<16} {'':>8}  {reason}".rstrip()
    secs = fmt_seconds(step_seconds(step))
    extra = ""
    if status == "failed" and isinstance(detail, dict) and isinstance(detail.get("error"), dict):
        e = detail["error"]
        extra = click.style(f"{e.get('code')}: {e.get('message', '')}", fg="red")
    else:
        items = detail_items(detail, skip=("seconds", "error"), numbers_only=True, limit=5)
        extra = click.style(items, dim=True) if items else ""
    return f"  {mark} {name:<16} {secs:>8}  {extra}".rstrip()


def render_outcome(job: dict[str, Any]) -> str:
    """The end of a job in words: the verified boot, or the classified failure."""
    st = job.get("state")
    took = fmt_seconds(job_seconds(job))
    if st == "succeeded":
        report = job.get("report") or {}
        boot = report.get("boot") or {}
        what = "booted" if boot.get("kind", "boot") == "boot" else "reported"
        parts = [f"model {short_sha(report.get('model_sha256') or job.get('model_sha256'))}"]
        if boot.get("arena_bytes") is not None:
            parts.append(f"arena {fmt_bytes(boot.get('arena_bytes'))}, "
                         f"used {fmt_bytes(boot.get('used_bytes'))}")
        if boot.get("firmware"):
            parts.append(f"firmware {boot['firmware']}")
        step_names = {s.get("name") for s in job.get("steps") or []}
        if "hotswap_transfer" in step_names:
            parts.append("hot-swapped (no compile, no upload)")
        elif report.get("compiled") is False:
            parts.append("build reused")
        head = click.style("verified boot", fg="green", bold=True)
        return (f"{head}: device {job.get('device_id')} {what} "
                f"{', '.join(parts)} (job {job.get('id')}, {took})")
    err = job.get("error") or {"code": st or "unknown", "message": f"job ended {st}"}
    head = click.style(f"job {job.get('id')} {st}", fg="red", bold=True)
    return f"{head} after {took}\n{render_error(err)}"


def render_job(job: dict[str, Any]) -> str:
    """A job in full: header, every step, outcome."""
    lines = [f"job {job.get('id')} on {job.get('device_id')}: {state(str(job.get('state')))}"
             f" (model {short_sha(job.get('model_sha256'))}, created "
             f"{when(job.get('created_at'))})"]
    lines += [render_step(s) for s in job.get("steps") or []]
    if job.get("state") in ("succeeded", "failed", "cancelled", "interrupted"):
        lines.append(render_outcome(job))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- device lines


def render_line(record: dict[str, Any]) -> str:
    """One observed line (``{"seq", "at", "line"}``) as a readable sentence."""
    line = record.get("line") or {}
    kind = line.get("kind")
    prefix = click.style(f"{clock(record.get('at'))} ", dim=True)
    if kind == "inference":
        outputs = line.get("outputs") or []
        label = line.get("label") or ""
        top = line.get("top")
        scores = " ".join(f"{v:.3f}" if isinstance(v, int | float) else str(v)
                          for v in outputs[:12])
        if len(outputs) > 12:
            scores += f" ... ({len(outputs)} outputs)"
        what = click.style(label, bold=True) if label else f"top {top}"
        latency = line.get("latency_us")
        ms = f"{latency / 1000:.2f} ms" if isinstance(latency, int | float) else "? ms"
        return f"{prefix}#{line.get('seq')} {what}  scores [{scores}]  latency {ms}"
    if kind == "boot":
        return prefix + click.style(
            f"boot: model {line.get('sha')} allocated its tensors (arena "
            f"{fmt_bytes(line.get('arena_bytes'))}, used {fmt_bytes(line.get('used_bytes'))}, "
            f"firmware {line.get('firmware') or '?'}, board {line.get('board') or '?'})",
            fg="green")
    if kind == "status":
        return prefix + click.style(
            f"status: running model {line.get('sha')}, up {line.get('uptime_s')} s, "
            f"{line.get('count')} inferences, firmware {line.get('firmware') or '?'}", fg="cyan")
    if kind == "error":
        numbers = detail_items(line.get("numbers") or {}, limit=8)
        text = f"device error {line.get('code')}: {line.get('message') or ''}".rstrip()
        if numbers:
            text += f" ({numbers})"
        return prefix + click.style(text, fg="red", bold=True)
    text = str(line.get("text", "")) if kind == "raw" else str(line)
    tag = "raw"
    reason = line.get("reason")
    if reason and reason != "not_protocol":
        tag += f" {reason}"
    if line.get("dropped_bytes"):
        tag += f", {line['dropped_bytes']} bytes cut"
    # Device text may hold control characters: never let them drive the terminal.
    safe = "".join(ch if ch.isprintable() or ch == "\t" else "\ufffd" for ch in text)
    return prefix + click.style(f"[{tag}] {safe}", dim=True)


def render_stream_event(event: str, data: dict[str, Any]) -> str:
    """A stream event that is not a line: lost lines, resumed connection."""
    if event == "dropped":
        return click.style(f"... {data.get('count')} lines dropped (this client fell behind)",
                           fg="yellow")
    if event == "reconnected":
        return click.style(f"... reconnected after: {data.get('error')} (resumed after line "
                           f"{data.get('after_seq')})", fg="yellow")
    return click.style(f"[{event}] {data}", dim=True)


# --------------------------------------------------------------------------------- doctor


def render_check(check: dict[str, Any], indent: str = "  ", warn_only: bool = False) -> str:
    ok = bool(check.get("ok"))
    if ok:
        mark = click.style("ok  ", fg="green")
    elif warn_only:
        mark = click.style("warn", fg="yellow", bold=True)
    else:
        mark = click.style("FAIL", fg="red", bold=True)
    text = f"{indent}{mark} {check.get('check', '?')}"
    if check.get("message"):
        text += f": {check['message']}"
    if not ok and check.get("fix"):
        text += "\n" + click.style(f"{indent}     fix: {check['fix']}", fg="cyan")
    return text
