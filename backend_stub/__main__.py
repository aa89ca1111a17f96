"""``python -m backend_stub`` is ``tinyml-backend``."""

from backend_stub.cli import main

main()
