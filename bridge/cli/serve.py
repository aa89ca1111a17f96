"""``tinyml-bridge serve``: run the bridge daemon in the foreground."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Configuration file (default: $TINYML_BRIDGE_CONFIG or "
                   "/etc/tinyml-bridge/bridge.toml; a missing default file means defaults).")
@click.option("--host", default=None, metavar="ADDRESS",
              help="Listen address (overrides [server] host and $TINYML_BRIDGE_HOST; "
                   "default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listen port; 0 picks a free one (overrides [server] port and "
                   "$TINYML_BRIDGE_PORT; default 5000).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (job history, verified models); overrides state_dir.")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback address without a token (trusted networks only).")
@click.pass_context
def serve(ctx: click.Context, config_path: Path | None, host: str | None, port: int | None,
          state_dir: Path | None, insecure: bool) -> None:
    """Run the bridge: the HTTP API over the attached boards and configured devices.

    Prints "tinyml-bridge listening on http://HOST:PORT" once it accepts connections, notifies
    systemd (Type=notify), and stops cleanly on SIGTERM. The token comes from the config file
    or $TINYML_BRIDGE_TOKEN, never from the command line (it would show in `ps`).

    Precedence: flags, then environment (TINYML_BRIDGE_HOST/PORT/TOKEN/CONFIG), then the
    config file, then defaults.
    """
    from bridge.config import env_overrides, load_config
    from bridge.server import configure_logging, run

    root = ctx.find_root()
    configure_logging(int(root.params.get("verbose") or 0))
    overrides = env_overrides()
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    config = load_config(config_path, overrides=overrides)
    sys.exit(run(config, insecure=insecure))
