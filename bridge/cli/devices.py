"""``tinyml-bridge devices``: list the devices a bridge knows."""

from __future__ import annotations

import click

from bridge.cli.common import CONNECTION_HELP, Invocation, bridge_command


@click.command(
    epilog=CONNECTION_HELP,
    help="""List the bridge's devices: driver, board, port or host, state (idle, installing,
running, failed), the model last verified on it and the last error.

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
    from bridge.cli.render import render_devices, render_error

    with inv.client() as client:
        if device:
            data = client.device(device)
            if inv.as_json:
                inv.emit_json(data)
                return 0
            click.echo(render_devices([data]))
            if data.get("last_error"):
                click.echo("\nlast error:")
                click.echo(render_error(data["last_error"]))
            return 0
        items = client.devices()
    if inv.as_json:
        inv.emit_json({"devices": items})
    else:
        click.echo(render_devices(items))
    return 0
