"""Regenerate the README's generated sections from the code they document.

    .venv/bin/python scripts/gen_docs.py          # rewrite README.md in place
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 if README.md is out of date

Sections sit between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``:
``config`` (bridge/config.example.toml verbatim), ``driver-settings`` (each driver's pydantic
settings model) and ``error-codes`` (hal.errors.CODES). tests/docs checks they are current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hal.driver import get_driver_class  # noqa: E402
from hal.errors import CODES  # noqa: E402

README = REPO / "README.md"
DRIVERS = ("nano33ble", "virtual-nano33ble", "rpi")


def _type_name(annotation: object) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")


def driver_settings() -> str:
    out = []
    for name in DRIVERS:
        cls = get_driver_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out += [f"**`driver = \"{name}\"`** {doc}", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, field in cls.Settings.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(
                call_default_factory=True))
            desc = (field.description or "").replace("|", "\\|")
            ty = _type_name(field.annotation).replace("|", "\\|")
            out.append(f"| `{key}` | `{ty}` | `{default}` | {desc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def error_codes() -> str:
    out = ["| code | class | meaning |", "|---|---|---|"]
    out += [f"| `{code}` | {cls.value} | {meaning} |" for code, (cls, meaning) in CODES.items()]
    return "\n".join(out) + "\n"


def config() -> str:
    text = (REPO / "bridge" / "config.example.toml").read_text()
    return f"```toml\n{text.rstrip()}\n```\n"


SECTIONS = {"config": config, "driver-settings": driver_settings, "error-codes": error_codes}


def render(readme: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)", re.S
        )
        if not pattern.search(readme):
            raise SystemExit(f"README.md lacks the generated:{name} markers")
        match = pattern.search(readme)
        readme = readme[: match.end(1)] + make() + readme[match.start(2):]
    return readme


def main() -> int:
    current = README.read_text()
    fresh = render(current)
    if "--check" in sys.argv[1:]:
        if fresh != current:
            print("README.md is out of date: run .venv/bin/python scripts/gen_docs.py")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
