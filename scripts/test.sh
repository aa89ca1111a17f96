#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. set up system packages and .venv (with TensorFlow for the training tests),
#   2. lint, 3. the default suite, 4. the heavy `train` suite.
# Extra arguments go to both pytest runs (e.g. -x, -k NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dev,train"

echo "== ruff"
.venv/bin/ruff check .

run_pytest() {
    # pytest exits 5 when it collected no tests: that is a failure here, never a pass.
    local rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests for: $*" >&2
        return 1
    fi
    return "$rc"
}

echo "== default suite"
run_pytest -m "not train" "$@"
echo "== train suite"
run_pytest -m train "$@"
