"""``tinyml-bridge jobs`` and ``tinyml-bridge cancel``: install jobs on the bridge."""

from __future__ import annotations

import click

from bridge.cli.common import CONNECTION_HELP, EXIT_FAILED, Invocation, bridge_command


@click.command(
    epilog=CONNECTION_HELP,
    help="""List recent install jobs (newest first), or show one JOB step by step.

\b
Examples:
  tinyml-bridge jobs
  tinyml-bridge jobs --device nano-1 --limit 5
  tinyml-bridge jobs 3f2a9c...            (one job: every step, the outcome)
  tinyml-bridge jobs --json
""",
)
@click.argument("job", required=False)
@click.option("--device", metavar="DEVICE", help="Only jobs of this device.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="At most this many jobs.")
@bridge_command
def jobs(inv: Invocation, job: str | None, device: str | None, limit: int) -> int:
    from bridge.cli.render import render_job, render_jobs

    with inv.client() as client:
        if job:
            data = client.job(job)
            if inv.as_json:
                inv.emit_json(data)
            else:
                click.echo(render_job(data))
            return 0
        items = client.jobs(device=device, limit=limit)
    if inv.as_json:
        inv.emit_json({"jobs": items})
    else:
        click.echo(render_jobs(items))
    return 0


@click.command(
    epilog=CONNECTION_HELP,
    help="""Cancel a running install JOB. The bridge kills whatever the job runs (compiler,
upload) and leaves the device in a known state; a job that already ended cannot be
cancelled (exit 1: the bridge answers 409). With --wait, exit 0 only if the job ended
cancelled.

\b
Examples:
  tinyml-bridge cancel 3f2a9c...
  tinyml-bridge cancel 3f2a9c... --wait     (return when the job has ended)
""",
)
@click.argument("job")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait until the job has actually ended.")
@click.option("--wait-timeout", type=click.FloatRange(1, 3600), default=120,
              show_default=True, metavar="SECONDS", help="How long --wait waits.")
@bridge_command
def cancel(inv: Invocation, job: str, wait: bool, wait_timeout: float) -> int:
    from bridge.cli.render import render_outcome, state

    with inv.client() as client:
        data = client.cancel(job)
        if wait:
            data = client.wait_job(job, timeout=wait_timeout)
    st = str(data.get("state"))
    code = EXIT_FAILED if wait and st != "cancelled" else 0
    if inv.as_json:
        inv.emit_json(data)
        return code
    if wait:
        click.echo(render_outcome(data))
        return code
    click.echo(f"cancel requested for job {data.get('id')} on {data.get('device_id')} "
               f"(now {state(st)})")
    return 0
