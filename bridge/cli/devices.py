"""``tinyml-bridge devices``: list the devices a bridge knows."""

from __future__ import annotations

import click

from bridge.cli.common import CONNECTION_HELP, Invocation, bridge_command


@click.command(
    epilog=CONNECTION_HELP,
    help="""List the bridge's devices: driver, board, port or host, state (idle, installing,
running, failed, crashed), the model last verified on it and why it is not simply running
(the job's error, the link's error or the runner's health, each shown on its own).

\b
Examples:
  tinyml-bridge devices
  tinyml-bridge devices --url http://10.0.0.5:5000 --token-file ~/.bridge-token
  tinyml-bridge devices --json | jq '.devices[].id'
  tinyml-bridge devices nano-1          (one device, in full)
""",
)
@click.argument("device", required=False)
@bridge_command
def devices(inv: Invocation, device: str | None) -> int:
    from bridge.cli.render import render_device_detail, render_devices

    with inv.client() as client:
        if device:
            data = client.device(device)
            if inv.as_json:
                inv.emit_json(data)
                return 0
            click.echo(render_devices([data]))
            click.echo("")
            click.echo(render_device_detail(data))
            return 0
        items = client.devices()
    if inv.as_json:
        inv.emit_json({"devices": items})
    else:
        click.echo(render_devices(items))
    return 0
