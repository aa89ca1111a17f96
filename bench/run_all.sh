#!/usr/bin/env bash
# Run every benchmark in sequence on a quiet machine and keep each one's output in
# bench/out/NAME.txt (the figures in BENCHMARKS.md come from these). Run as root (bench_rpi
# starts the test sshd and its users). Takes about 30 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
{ date -u; uname -srm; lscpu | grep -E "Model name|^CPU\(s\)"; free -g | head -2; uptime; } \
    > bench/out/machine.txt
for b in analysis sketch arduino hotswap sizes arena32 rpi bridge backend digits c_array exhaustion; do
    echo "== bench_$b" >&2
    .venv/bin/python "bench/bench_$b.py" > "bench/out/$b.txt" 2>&1
    echo "   exit $? ($(tail -c 300 "bench/out/$b.txt" | tr '\n' ' ' | cut -c1-120))" >&2
done
# Rollouts (issue 13): 24 virtual boards behind 3 bridges.
echo "== bench_rollout" >&2
.venv/bin/python bench/bench_rollout.py > bench/out/rollout.txt 2>&1
echo "   exit $? ($(tail -n 8 bench/out/rollout.txt | head -n 1 | cut -c1-120))" >&2
# Issue 10: ten minutes of mixed load against both daemons.
echo "== soak (10 minutes)" >&2
.venv/bin/python bench/soak.py --duration 600 > bench/out/soak.txt 2>&1
echo "   exit $?" >&2
