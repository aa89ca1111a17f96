"""``python -m bridge ...`` runs ``tinyml-bridge`` (e.g. ``python -m bridge serve``)."""

from bridge.cli import main

main()
