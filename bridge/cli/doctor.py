"""``tinyml-bridge doctor``: is this bridge (and the machine it runs on) ready to install?"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from pathlib import Path
from typing import Any

import click

from bridge.cli.common import CONNECTION_HELP, EXIT_FAILED, Invocation, bridge_command
from hal.errors import HalError, InfraError, as_hal_error

# Seconds each device's diagnose() may take, and all local checks together.
DEVICE_DEADLINE_S = 15.0
LOCAL_DEADLINE_S = 30.0


def _check(name: str, ok: bool, message: str = "", fix: str = "") -> dict[str, Any]:
    return {"check": name, "ok": ok, "message": message, "fix": fix}


def _norm_checks(raw: Any, source: str) -> list[dict[str, Any]]:
    """Checks as returned by a driver, made safe to render (a malformed entry is a failure)."""
    if not isinstance(raw, list):
        return [_check(f"{source} checks", False, f"returned {type(raw).__name__}, not a list")]
    out = []
    for item in raw:
        if isinstance(item, dict) and "check" in item:
            out.append({"check": str(item.get("check")), "ok": item.get("ok") is True,
                        "message": str(item.get("message") or ""),
                        "fix": str(item.get("fix") or "")})
        else:
            out.append(_check(f"{source} check", False, f"malformed check entry {item!r}"[:200]))
    return out


def _driver_section(name: str, info: Any, used: bool | None) -> dict[str, Any]:
    """A driver's tool report (``{"available", "checks"}``) as a doctor section."""
    info = info if isinstance(info, dict) else {}
    checks = _norm_checks(info.get("checks", []), f"driver {name}")
    available = info.get("available") is True
    if not available and all(c["ok"] for c in checks):
        checks.append(_check("tools available", False,
                             str(info.get("message") or "the driver reports its tools "
                                 "unavailable")))
    return {"section": f"driver {name}", "driver": name, "available": available,
            "used": used, "checks": checks}


# ----------------------------------------------------------------------------- remote


def device_checks(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One check per device (connected) and, when the bridge knows its liveness, one for
    whether its runner or sketch is alive."""
    checks = []
    for d in devices:
        connected = bool(d.get("connected"))
        err = d.get("last_error") or {}
        msg = f"{d.get('driver')} at {d.get('address')}, {d.get('state')}"
        if err:
            msg += f"; last error {err.get('code')}: {err.get('message', '')}"
        fix = (err.get("detail") or {}).get("fix", "") if isinstance(err, dict) else ""
        checks.append(_check(f"device {d.get('id')} connected", connected, msg,
                             fix or ("" if connected else "check the cable or the network "
                                     "and the device's settings")))
        health = d.get("health") or {}
        if health.get("state") in ("ok", "crashed"):  # liveness of what runs on it
            checks.append(_check(f"device {d.get('id')} runner alive",
                                 health["state"] == "ok", str(health.get("message", "")),
                                 "" if health["state"] == "ok" else
                                 "install the model again, or see the runner's stderr "
                                 "in `tinyml-bridge devices " + str(d.get("id")) + "`"))
    return checks


def remote_sections(inv: Invocation) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Checks of the bridge over HTTP: reachable, token accepted, drivers' host tools,
    devices connected. Returns (sections, health)."""
    try:
        settings = inv.settings()
        client = inv.client()
    except HalError as exc:
        return [{"section": "bridge", "checks": [
            _check("bridge address and token", False, exc.message,
                   "give --url (and --token-file) explicitly")]}], None
    bridge: dict[str, Any] = {"section": f"bridge {settings.url}", "checks": []}
    sections = [bridge]
    with client:
        try:
            health = client.health()
        except HalError as exc:
            bridge["checks"].append(_check(
                "bridge reachable", False, exc.message,
                str(exc.detail.get("fix") or "start it: tinyml-bridge serve --config FILE")))
            return sections, None
        bridge["checks"].append(_check(
            "bridge reachable", True,
            f"version {health.get('version', '?')}, up {health.get('uptime_s', '?')} s"))
        devices: list[dict[str, Any]] | None = None
        try:
            devices = client.devices()
            how = "accepted" if settings.token else "not needed"
            bridge["checks"].append(_check("token", True, how))
        except HalError as exc:
            fix = ("give the bridge's token: --token-file, TINYML_BRIDGE_TOKEN or the config's "
                   "[server] token" if exc.code == "unauthorized" else "")
            bridge["checks"].append(_check("token", False, f"{exc.code}: {exc.message}", fix))
    used = None if devices is None else {str(d.get("driver")) for d in devices}
    drivers = health.get("drivers") or {}
    if isinstance(drivers, dict):
        for name in sorted(drivers):
            sections.append(_driver_section(name, drivers[name],
                                            None if used is None else name in used))
    # Health may carry per-device diagnostics too; render them when it does.
    for dev in health.get("devices") or []:
        if isinstance(dev, dict) and "checks" in dev:
            sections.append({"section": f"device {dev.get('id')}",
                             "checks": _norm_checks(dev["checks"], f"device {dev.get('id')}")})
    if devices is not None:
        checks = device_checks(devices)
        if not checks:
            checks.append(_check("devices", True, "none configured or attached"))
        sections.append({"section": "devices (as the bridge sees them)", "checks": checks,
                         "devices_seen": [{"id": d.get("id")} for d in devices]})
    return sections, health


# ------------------------------------------------------------------------------ local


def local_sections(config_path: str, owned: set[str] | None = None) -> list[dict[str, Any]]:
    """Checks run here, through hal: every configured or discoverable driver's
    ``check_tools`` and every device's ``diagnose``. Needs the bridge machine's config.

    Devices in ``owned`` (those a running bridge reported) are not diagnosed from here: a
    second driver instance in this process would compete with the daemon for the port, the
    SSH runner or the virtual board; the bridge's own view of them is shown instead."""
    owned = owned or set()
    from bridge.config import load_config
    from hal.deadline import Deadline
    from hal.driver import build_driver, get_driver_class

    config = load_config(Path(config_path))
    context = config.driver_context()
    sections: list[dict[str, Any]] = []
    names = sorted({d.driver for d in config.devices} | set(config.discovery.drivers))
    used = {d.driver for d in config.devices}
    classes = {}
    for name in names:
        try:
            cls = get_driver_class(name)
            classes[name] = cls
            info = cls.check_tools(context)
        except Exception as exc:  # check_tools must not raise; if it does, that is a finding
            err = as_hal_error(exc)
            info = {"available": False,
                    "checks": [_check("driver loads", False, f"{err.code}: {err.message}")]}
        section = _driver_section(name, info, name in used or None)
        section["section"] = f"driver {name} (local)"
        sections.append(section)

    # Devices: configured ones, then discovered ones not already named in the config.
    targets: list[tuple[str, str, dict[str, Any]]] = [
        (d.name, d.driver, d.settings) for d in config.devices]
    for name in config.discovery.drivers:
        cls = classes.get(name)
        if cls is None:
            continue
        try:
            found = cls.discover(context)
        except Exception as exc:
            err = as_hal_error(exc)
            sections.append({"section": f"discovery {name} (local)", "checks": [
                _check("discover", False, f"{err.code}: {err.message}")]})
            continue
        known = {t[0] for t in targets}
        targets += [(f.id, name, f.settings) for f in found if f.id not in known]
        if name not in used and found:
            sections[[s.get("driver") for s in sections].index(name)]["used"] = True

    def diagnose(target: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        dev_id, driver_name, settings = target
        started = time.monotonic()
        try:
            driver = build_driver(driver_name, dev_id, settings, context)
        except Exception as exc:
            err = as_hal_error(exc)
            return {"section": f"device {dev_id} (local)", "checks": [
                _check("settings", False, f"{err.code}: {err.message}")]}
        try:
            checks = _norm_checks(driver.diagnose(Deadline(DEVICE_DEADLINE_S,
                                                           what=f"diagnose {dev_id}")),
                                  f"device {dev_id}")
        except Exception as exc:
            err = as_hal_error(exc)
            checks = [_check("diagnose", False, f"{err.code}: {err.message}",
                             str(err.detail.get("fix", "")))]
        finally:
            with contextlib.suppress(Exception):  # closing a broken driver is best effort
                driver.close()
        if not checks:
            checks = [_check("diagnose", True, f"{driver_name}: nothing to check")]
        return {"section": f"device {dev_id} ({driver_name}, local, "
                f"{time.monotonic() - started:.1f} s)", "checks": checks}

    skipped = [t for t in targets if t[0] in owned]
    targets = [t for t in targets if t[0] not in owned]
    if skipped:
        sections.append({"section": "devices owned by the running bridge (local)", "checks": [
            _check(f"device {t[0]}", True, "not diagnosed a second time from here: see "
                   "the bridge's view above (stop the daemon and use --no-remote, or "
                   "--diagnose-owned, to run its checks here)") for t in skipped]})
    if targets:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(targets)))
        futures = [pool.submit(diagnose, t) for t in targets]
        done, _ = concurrent.futures.wait(futures, timeout=LOCAL_DEADLINE_S)
        for target, fut in zip(targets, futures, strict=True):
            if fut in done:
                sections.append(fut.result())
            else:
                err = InfraError("timeout", f"diagnose of {target[0]} did not end within "
                                 f"{LOCAL_DEADLINE_S:g} s")
                sections.append({"section": f"device {target[0]} (local)", "checks": [
                    _check("diagnose", False, err.message)]})
        # Do not wait for a hung driver: the process exits after rendering.
        pool.shutdown(wait=False, cancel_futures=True)
    return sections


# ---------------------------------------------------------------------------- command


def _reported_devices(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for section in sections:
        if "devices_seen" in section:
            return section["devices_seen"]
    return []



def verdict(sections: list[dict[str, Any]], strict: bool) -> tuple[int, int]:
    """(failures, warnings). A failed check of a driver no device uses is a warning unless
    ``strict``."""
    failures = warnings = 0
    for section in sections:
        lenient = section.get("used") is False and not strict
        for check in section.get("checks", []):
            if not check["ok"]:
                if lenient:
                    warnings += 1
                else:
                    failures += 1
    return failures, warnings


def render_sections(sections: list[dict[str, Any]], strict: bool) -> str:
    from bridge.cli.render import render_check

    out = []
    for section in sections:
        title = section["section"]
        lenient = section.get("used") is False and not strict
        if lenient:
            title += click.style(" (no device uses it)", dim=True)
        out.append(click.style(title, bold=True))
        checks = section.get("checks") or []
        if not checks:
            out.append("  (no checks reported)")
        out += [render_check(c, warn_only=lenient) for c in checks]
    return "\n".join(out)


@click.command(
    epilog=CONNECTION_HELP,
    help="""Check that a bridge can install and observe: the bridge answers and accepts the
token, each driver's host tools (arduino-cli found, mbed_nano core and TFLM library
installed, the user in dialout...) and each device (port readable, Pi reachable with its
runtime). Every failed check comes with a fix.

With --local (on the bridge machine, with the bridge's --config; the default when --config
is given) the checks also run here, directly through the drivers: each driver's host tools,
and each device's own diagnosis -- for devices the running bridge owns, the bridge's view is
shown instead (a second driver would compete with it for the port), unless
--diagnose-owned. With the daemon stopped, use --no-remote.

Exit 0 when every check passes, 1 when any fails. Checks of a driver no device uses are
warnings unless --strict.

\b
Examples:
  tinyml-bridge doctor
  tinyml-bridge doctor --config /etc/tinyml-bridge/bridge.toml
  tinyml-bridge doctor --config /etc/tinyml-bridge/bridge.toml --no-remote
  tinyml-bridge doctor --url http://10.0.0.5:5000 --token-file ~/.bridge-token --json
""",
)
@click.option("--local/--no-local", "local", default=None,
              help="Also run the checks on this machine through hal (default: on when "
                   "--config is given).")
@click.option("--remote/--no-remote", default=True, show_default=True,
              help="Ask the running bridge (--no-remote: local checks only, e.g. before the "
                   "daemon is started).")
@click.option("--diagnose-owned", is_flag=True,
              help="With --local: diagnose here even the devices the running bridge owns "
                   "(opens their ports alongside the daemon).")
@click.option("--strict", is_flag=True, help="Count failures of unused drivers too.")
@bridge_command
def doctor(inv: Invocation, local: bool | None, remote: bool, diagnose_owned: bool,
           strict: bool) -> int:
    if local is None:
        local = inv.config is not None
    if local and inv.config is None:
        raise click.UsageError("--local needs the bridge's --config FILE")
    if not local and not remote:
        raise click.UsageError("--no-remote needs --local (and --config): nothing to check")
    sections: list[dict[str, Any]] = []
    health = None
    if remote:
        sections, health = remote_sections(inv)
    if local:
        try:
            owned: set[str] = set()
            if health is not None and not diagnose_owned:
                owned = {str(d.get("id")) for d in _reported_devices(sections)}
            sections += local_sections(inv.config, owned)
        except HalError as exc:
            sections.append({"section": f"config {inv.config} (local)", "checks": [
                _check("config valid", False, f"{exc.code}: {exc.message}")]})
    failures, warnings = verdict(sections, strict)
    if inv.as_json:
        inv.emit_json({"ok": failures == 0, "failures": failures, "warnings": warnings,
                       "sections": sections, "health": health})
    else:
        click.echo(render_sections(sections, strict))
        summary = f"{failures} failed, {warnings} warnings"
        click.echo(click.style(summary, fg="red" if failures else "green", bold=True))
    return EXIT_FAILED if failures else 0
