"""bench/soak.py in its 10-second form: both daemons survive the mixed load (issue 10 item 8)
and give back what it took. The 10-minute figures are in BENCHMARKS.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.bridge.conftest import REPO


def test_ten_second_soak_of_both_daemons():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "10",
                          "--json-only"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("SOAK_JSON "))
    result = json.loads(line.removeprefix("SOAK_JSON "))
    assert result["exit_codes"] == {"bridge": 0, "backend": 0}
    counts = result["counts"]
    assert not [k for k in counts if "FAILED" in k or re.search(r" 5\d\d$", k)], counts
    for name in ("bridge", "backend"):
        r = result[name]
        assert r["tracebacks_in_log"] == 0
        assert counts.get(f"{name} health ok", 0) == r["health_requests"] > 0
        # What the load took is given back (a little slack for pooled keep-alive sockets).
        assert r["after"]["threads"] <= r["before"]["threads"] + 2, r
        assert r["after"]["fds"] <= r["before"]["fds"] + 8, r
    assert counts.get("bridge slow client not cut off", 0) == 0
