"""``tinyml-bridge``: the technician's command line.

Exit status: 0 success, 1 a classified failure (the JSON or text says which), 2 a usage error.
Subcommands live in their own modules and are loaded on first use, so ``--help`` stays fast and
a command's heavy imports (Flask, TFLM) cost nothing to the others.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command or group.
_COMMANDS = {
    "model": "bridge.cli.model:model",
    "devices": "bridge.cli.devices:devices",
    "install": "bridge.cli.install:install",
    "observe": "bridge.cli.observe:observe",
    "jobs": "bridge.cli.jobs:jobs",
    "cancel": "bridge.cli.jobs:cancel",
    "doctor": "bridge.cli.doctor:doctor",
    "serve": "bridge.cli.serve:serve",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module, attr = _COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyml-bridge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Install TinyML models on attached boards and Raspberry Pis, and watch them run.

    Run a bridge with `tinyml-bridge serve`, then use the other commands against it
    (URL and token from --url/--token, TINYML_BRIDGE_URL/TINYML_BRIDGE_TOKEN, or the config).
    """
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point: classified failures exit 1 with their code, never a
    traceback (``-v`` logs it); click's usage errors exit 2."""
    import sys

    from hal.errors import as_hal_error

    try:
        cli(prog_name="tinyml-bridge", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as exc:
        import logging

        logging.getLogger("tinyml-bridge").debug("unhandled", exc_info=True)
        err = as_hal_error(exc)
        click.echo(f"error: {err.code}: {err.message}", err=True)
        sys.exit(1)
