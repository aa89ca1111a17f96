#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. set up system packages and .venv (with TensorFlow for the training tests),
#   2. lint, 3. the default suite, 4. the heavy `train` suite, 5. the `firmware` suite (every
#   sketch variant compiled for Cortex-M4 against the real sources in ../shared, the size
#   model against real links, the QEMU arena harness).
# Extra arguments go to every pytest run (e.g. -x, -k NAME).
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
run_pytest -m "not train and not firmware" "$@"
echo "== train suite"
run_pytest -m train "$@"
echo "== firmware suite"
run_pytest -m firmware "$@"
