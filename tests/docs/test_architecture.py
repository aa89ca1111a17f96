"""The layout shows the architecture, and these tests keep it that way: ``hal`` knows nothing
of HTTP or the bridge; the bridge reaches targets only through the ``hal`` driver interface;
the backend talks to bridges only through the bridge's HTTP client."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO


def _imports(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (top level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in _imports(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize("package", ["hal", "firmware_templates"])
def test_hal_and_targets_know_nothing_of_http_or_the_bridge(package):
    forbidden = ("bridge", "backend_stub", "flask", "werkzeug", "waitress", "requests",
                 "urllib3", "http")
    assert _offenders(package, forbidden) == []


def test_bridge_reaches_targets_only_through_the_driver_interface():
    # No tool command lines, SSH, or driver internals: those live in hal's driver folders.
    forbidden = ("paramiko", "serial", "hal.process", "hal.arduino", "hal.rpi", "hal.virtual")
    assert _offenders("bridge", forbidden) == []


def test_backend_talks_to_bridges_only_over_http():
    forbidden = tuple(f"bridge.{m}" for m in (
        "app", "api", "jobs", "registry", "state", "streams", "legacy", "server", "config"))
    assert _offenders("backend_stub", forbidden) == []


def test_one_driver_family_per_folder():
    families = {p.parent.name for p in (REPO / "hal").glob("*/driver.py")}
    assert families == {"arduino", "rpi", "virtual"}
