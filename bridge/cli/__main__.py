"""``python -m bridge.cli`` runs ``tinyml-bridge`` (for environments without the script)."""

from bridge.cli import main

main()
