"""``python -m tests.bridge.run_bridge serve ...``: the real ``tinyml-bridge`` entry point with
the test-only ``test-fake`` hal driver registered (the virtual board needs no such help)."""

import tests.bridge.fake_driver  # noqa: F401  (registers "test-fake")
from bridge.cli import main

main()
