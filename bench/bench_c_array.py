"""The legacy C-source parser (issue 10 item 1): time to parse or refuse hostile and real
bodies of 1 and 4 MiB, and /health latency while a bridge parses hostile bodies.

    .venv/bin/python bench/bench_c_array.py

Linear time shows as the 4 MiB figure being about four times the 1 MiB one. Prints a table
and one JSON line (``BENCH_JSON {...}``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.c_array import parse_c_array
from hal.errors import HalError

MIB = 1024 * 1024


def bodies(size: int) -> dict[str, str]:
    data = bytes(range(256)) * (size // 6 // 256)
    return {
        "model (hex, old backend format)": "const unsigned char m[] = {"
        + ", ".join(f"0x{b:02X}" for b in data) + "};",
        "repeated `char a[] `": "char a[] " * (size // 9),
        "repeated `char a[] = `": "char a[] = " * (size // 11),
        "unclosed `/*`": "/*" * (size // 2),
        "open braces": "{" * size,
        "one long blank": "unsigned " + " " * size,
    }


def timed(source: str) -> tuple[float, str]:
    runs = []
    outcome = ""
    for _ in range(3):
        started = time.perf_counter()
        try:
            outcome = f"{len(parse_c_array(source, max_bytes=4 * MIB))} bytes"
        except HalError as exc:
            outcome = exc.code
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), outcome


def main() -> None:
    results: dict[str, dict] = {}
    small, large = bodies(MIB), bodies(4 * MIB)
    print(f"{'body':34} {'1 MiB s':>8} {'4 MiB s':>8} {'ratio':>6}  outcome")
    for name in small:
        t1, _ = timed(small[name])
        t4, outcome = timed(large[name])
        results[name] = {"s_1mib": round(t1, 4), "s_4mib": round(t4, 4), "outcome": outcome}
        print(f"{name:34} {t1:8.3f} {t4:8.3f} {t4 / t1 if t1 else 0:6.1f}  {outcome}")
    print("BENCH_JSON " + json.dumps({"c_array": results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
