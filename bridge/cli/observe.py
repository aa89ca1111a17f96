"""``tinyml-bridge observe``: what a device prints, as readable lines (or live)."""

from __future__ import annotations

import json
import time

import click

from bridge.cli.common import CONNECTION_HELP, EXIT_INTERRUPTED, Invocation, bridge_command


@click.command(
    epilog=CONNECTION_HELP,
    help="""Show DEVICE's most recent lines: inferences (label, scores, latency), boot and
status lines (which model runs), device errors in words, and anything else as dimmed [raw]
lines. With --follow, keep printing live lines (Server-Sent Events) until Ctrl-C, resuming
after a dropped connection without losing or repeating lines.

\b
Examples:
  tinyml-bridge observe nano-1
  tinyml-bridge observe nano-1 --lines 100
  tinyml-bridge observe nano-1 --follow
  tinyml-bridge observe nano-1 --follow --lines 0 --count 20   (the next 20 lines)
  tinyml-bridge observe nano-1 --follow --json | jq .line.label   (one JSON object a line)
""",
)
@click.argument("device")
@click.option("-n", "--lines", type=click.IntRange(0, 2000), default=20, show_default=True,
              help="How many recent lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing live lines.")
@click.option("--count", type=click.IntRange(1), metavar="N",
              help="With --follow: stop after N live lines.")
@click.option("--for", "duration", type=click.FloatRange(0.1), metavar="SECONDS",
              help="With --follow: stop after this many seconds.")
@bridge_command
def observe(inv: Invocation, device: str, lines: int, follow: bool, count: int | None,
            duration: float | None) -> int:
    from bridge.cli.render import render_line, render_stream_event

    if (count or duration) and not follow:
        raise click.UsageError("--count and --for only make sense with --follow")
    with inv.client() as client:
        # The bridge returns at least one line; --lines 0 still needs last_seq to follow from.
        recent = client.observe(device, lines=max(1, lines))
        if lines == 0:
            recent["lines"] = []
        if inv.as_json and not follow:
            inv.emit_json(recent)
            return 0
        for record in recent.get("lines") or []:
            _print(inv, render_line, record)
        if not follow:
            if not recent.get("lines") and not inv.as_json:
                click.echo(f"no lines from {device} yet", err=True)
            return 0
        since = recent.get("last_seq")
        end = None if duration is None else time.monotonic() + duration
        seen = 0

        def should_stop() -> bool:
            return (end is not None and time.monotonic() >= end) or (
                count is not None and seen >= count)

        if not inv.as_json:
            click.echo(click.style(f"following {device} (Ctrl-C to stop)", dim=True), err=True)
        try:
            # A silent device must not hold --for past its end: bound each read by it.
            read_timeout = 45.0 if duration is None else min(45.0, duration + 0.5)
            for event in client.stream(device, since=since, should_stop=should_stop,
                                       read_timeout=read_timeout):
                if event.event == "line":
                    seen += 1
                    _print(inv, render_line, event.data)
                elif inv.as_json:
                    click.echo(json.dumps({"event": event.event, **event.data}))
                else:
                    click.echo(render_stream_event(event.event, event.data), err=True)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    return 0


def _print(inv: Invocation, render_line, record: dict) -> None:
    if inv.as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(render_line(record))
