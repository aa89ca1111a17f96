#!/usr/bin/env bash
# Run every benchmark in sequence on a quiet machine and keep each one's output in
# bench/out/NAME.txt (the figures in BENCHMARKS.md come from these). Run as root (bench_rpi
# starts the test sshd and its users). Takes about 15 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
{ date -u; uname -srm; lscpu | grep -E "Model name|^CPU\(s\)"; free -g | head -2; uptime; } \
    > bench/out/machine.txt
for b in analysis sketch arduino hotswap rpi bridge backend; do
    echo "== bench_$b" >&2
    .venv/bin/python "bench/bench_$b.py" > "bench/out/$b.txt" 2>&1
    echo "   exit $? ($(tail -c 300 "bench/out/$b.txt" | tr '\n' ' ' | cut -c1-120))" >&2
done
