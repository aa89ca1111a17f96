"""What every client command of ``tinyml-bridge`` shares: the connection options, ``--json``,
and the translation of failures into exit codes (0 success, 1 classified failure, 2 usage)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from hal.errors import BugError, HalError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONNECTION_HELP = """
\b
Which bridge (first found wins):
  --url / --token / --token-file
  TINYML_BRIDGE_URL, TINYML_BRIDGE_TOKEN, TINYML_BRIDGE_TOKEN_FILE
  the config file's [server] host, port, token, token_file
    (--config, TINYML_BRIDGE_CONFIG, or /etc/tinyml-bridge/bridge.toml)
  http://127.0.0.1:5000 without a token
\b
Exit status: 0 success, 1 a classified failure (code and message printed;
the error JSON with --json), 2 a usage error.
"""


@dataclass
class Invocation:
    """The connection options and output mode of one command run."""

    url: str | None
    token: str | None
    token_file: str | None
    config: str | None
    timeout: float
    as_json: bool

    def settings(self):  # -> bridge.client.ClientSettings
        from bridge.client import resolve_settings

        return resolve_settings(self.url, self.token, self.token_file, self.config)

    def client(self):  # -> bridge.client.BridgeClient
        from bridge.client import BridgeClient

        return BridgeClient.from_settings(self.settings(), timeout=self.timeout)

    def emit_json(self, data: Any) -> None:
        """One JSON document on stdout (for scripts)."""
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def fail(err: HalError, as_json: bool) -> NoReturn:
    """Print a classified failure and exit 1."""
    if as_json:
        click.echo(json.dumps(err.to_dict(), indent=2, default=str))
    else:
        from bridge.cli.render import render_error

        click.echo(render_error(err.to_dict()), err=True)
    sys.exit(EXIT_FAILED)


def bridge_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection options and ``--json`` to a click command callback, hand it an
    :class:`Invocation` as first argument, and map its outcome to the exit status."""

    @click.option("--url", metavar="URL", help="Bridge URL, e.g. http://10.0.0.5:5000.")
    @click.option("--token", metavar="TOKEN", help="Bearer token (prefer --token-file or env).")
    @click.option("--token-file", metavar="FILE", type=click.Path(dir_okay=False),
                  help="Read the bearer token from FILE.")
    @click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
                  help="Bridge config file to take [server] host/port/token from.")
    @click.option("--timeout", type=click.FloatRange(0.1, 3600), default=10.0,
                  show_default=True, help="Seconds to wait for each HTTP answer.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(fn)
    def wrapper(url, token, token_file, config_path, timeout, as_json, **kwargs):
        inv = Invocation(url, token, token_file, config_path, timeout, as_json)
        try:
            code = fn(inv, **kwargs)
        except HalError as err:
            fail(err, as_json)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException,
                SystemExit):
            raise
        except Exception as exc:  # a bug of ours: say so in one line, keep the traceback in -v
            log.debug("unexpected error", exc_info=True)
            fail(BugError("internal", f"{type(exc).__name__}: {exc} (run with -vv for the "
                          "traceback)"), as_json)
        sys.exit(code or EXIT_OK)

    return wrapper
