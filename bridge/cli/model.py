"""``tinyml-bridge model inspect``: validate a ``.tflite`` file and show what a target needs.

Runs locally (no bridge needed): :func:`hal.model.analyze` plus, with ``--board``, the static
fit check of :mod:`hal.boards`, and with ``--measure`` the real TFLM interpreter.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from bridge.cli.common import EXIT_FAILED, EXIT_OK, fail
from hal.errors import BugError, HalError

log = logging.getLogger(__name__)

MEASURE_TIMEOUT_S = 120.0


def _board_names() -> list[str]:
    from hal.boards import profiles

    return sorted(profiles())


@click.group()
def model() -> None:
    """Inspect TFLite model files."""


@model.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True,
                                        path_type=Path))
@click.option("--board", type=click.Choice(_board_names()), default=None,
              help="Check ops, int8 and the fit against this board profile.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the error object on failure).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Size limit in bytes [default: 4 MiB, or the board's model limit].")
@click.option("--measure", is_flag=True,
              help="Also run the real TFLM interpreter (tflite-micro, x86_64) in a child "
                   "process and report the arena it allocates.")
def inspect(path: Path, board: str | None, as_json: bool, max_bytes: int | None,
            measure: bool) -> None:
    """Validate the model at PATH and print its tensors, ops and arena estimate.

    \b
    With --board: unsupported ops, a float model on an int8-only board and a model
    that does not fit the board's flash/RAM are failures (exit 1).
    Exit status: 0 valid (and fits, with --board), 1 a classified failure (the
    error object {"code", "message", "detail"} with --json), 2 a usage error
    (bad option, unknown board, PATH missing or unreadable).
    """
    try:
        data, code = _inspect(path, board, max_bytes, measure)
    except HalError as err:
        fail(err, as_json)
    except Exception as exc:  # our bug: one line, the traceback with -vv
        log.debug("unexpected error", exc_info=True)
        fail(BugError("internal", f"{type(exc).__name__}: {exc}"), as_json)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(_render(path, data))
    sys.exit(code)


def _inspect(path: Path, board: str | None, max_bytes: int | None,
             measure: bool) -> tuple[dict[str, Any], int]:
    from hal.model import analyze_file, resolver_methods
    from hal.model.ops import resolver_method

    report = analyze_file(path, max_bytes=max_bytes, board=board)
    data = report.to_dict()
    data["path"] = str(path)
    supported = [op for op in report.ops if resolver_method(op) is not None]
    data["resolver_methods"] = resolver_methods(supported)
    if measure:
        from hal.deadline import Deadline
        from hal.model.measure import measure_arena_detail, unavailable_reason

        m = measure_arena_detail(
            path.read_bytes(), deadline=Deadline(MEASURE_TIMEOUT_S, what="TFLM arena measurement")
        )
        data["arena_measured_bytes"] = None if m is None else m.total
        if m is None:
            data["measure_skipped"] = unavailable_reason() or "tflite-micro is not available"
        else:
            data["arena_measured_head_bytes"] = m.head
            data["arena_measured_tail_bytes"] = m.tail
    if board is not None:
        from hal.boards import fit_check, get_profile

        fit = fit_check(report, get_profile(board))
        data["fit"] = fit.to_dict()
        if not fit.fits:
            try:
                fit.raise_if_not_fit()
            except HalError as err:
                err.detail["report"] = {k: v for k, v in data.items() if k != "fit"}
                raise
    return data, EXIT_OK if "fit" not in data or data["fit"]["fits"] else EXIT_FAILED


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _tensor(t: dict[str, Any]) -> str:
    text = f"{t['name'] or '(unnamed)'}  {t['dtype']} {list(t['shape'])}"
    if t.get("scale") is not None:
        text += f"  scale {t['scale']:.6g} zero point {t['zero_point']}"
    return text


def _render(path: Path, d: dict[str, Any]) -> str:
    lines = [
        f"model      {path.name}  {_n(d['size_bytes'])} bytes  sha256 {d['sha256'][:16]}",
    ]
    lines += [f"input      {_tensor(t)}" for t in d["inputs"]]
    lines += [f"output     {_tensor(t)}" for t in d["outputs"]]
    lines.append(f"ops ({len(d['ops'])})    {', '.join(d['ops'])}")
    methods = d.get("resolver_methods") or []
    lines.append(f"resolver   MicroMutableOpResolver<{len(methods)}>: {', '.join(methods)}")
    lines.append(f"int8       {'yes' if d['int8'] else 'no'}")
    tail = d["arena_estimate_bytes"] - d["activation_bytes"]
    lines.append(
        f"arena      {_n(d['arena_estimate_bytes'])} bytes estimated (activations "
        f"{_n(d['activation_bytes'])} + interpreter {_n(tail)}; TFLM, 64-bit host)"
    )
    if "arena_measured_bytes" in d:
        if d["arena_measured_bytes"] is None:
            lines.append(f"measured   skipped: {d.get('measure_skipped')}")
        else:
            est, real = d["arena_estimate_bytes"], d["arena_measured_bytes"]
            lines.append(
                f"measured   {_n(real)} bytes by TFLM on this host (estimate "
                f"{100.0 * (est - real) / real:+.1f}%)"
            )
    fit = d.get("fit")
    if fit:
        verdict = "fits" if fit["fits"] else "DOES NOT FIT"
        lines.append(f"fit        {fit['board']}: {verdict}")
        if fit["flash_limit_bytes"] is not None:
            lines.append(
                f"  flash    {_n(fit['flash_needed_bytes'])} of {_n(fit['flash_limit_bytes'])} "
                f"bytes (model {_n(fit['model_flash_bytes'])} + baseline "
                f"{_n(fit['baseline_flash_bytes'])}), margin {_n(fit['flash_margin_bytes'])}"
            )
        if fit["ram_limit_bytes"] is not None:
            lines.append(
                f"  RAM      {_n(fit['ram_needed_bytes'])} of {_n(fit['ram_limit_bytes'])} bytes "
                f"(arena {_n(fit['arena_bytes'])} + baseline {_n(fit['baseline_ram_bytes'])} + "
                f"reserve {_n(fit['ram_reserve_bytes'])}), margin {_n(fit['ram_margin_bytes'])}"
            )
        lines += [f"  reason   {r}" for r in fit["reasons"]]
    lines += [f"warning    {w}" for w in d["warnings"]]
    return "\n".join(lines)
