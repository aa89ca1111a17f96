"""Raspberry Pi (any Linux target over SSH): transport (``ssh``), ``preflight``, ``deploy``,
process supervision (``supervise``), boot verification (``boot``), observation (``observe``)
and the driver registered as ``rpi`` (``driver``)."""
