"""The per-host bridge daemon: HTTP API over the ``hal`` drivers, plus the technician CLI.

``bridge`` never builds an arduino-cli command line or an SSH command: it calls ``hal``.
"""

__version__ = "0.1.0"
