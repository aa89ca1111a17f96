"""Hardware abstraction for TinyML targets.

Layers, each a folder or module you can find by name:

* ``hal.errors``, ``hal.deadline``, ``hal.process`` -- the error taxonomy, the deadline type and
  the one subprocess runner every driver uses.
* ``hal.protocol`` -- the device line protocol every target prints and every host parses.
* ``hal.model`` -- TFLite model analysis (validation, ops, RAM estimate, measured arena).
* ``hal.boards`` -- board profiles as data and the fit check.
* ``hal.driver`` -- the driver interface and registry; ``hal.arduino``, ``hal.rpi`` and
  ``hal.virtual`` are the driver families and the hardware-free stand-ins.

``hal`` never imports ``bridge``, Flask or an HTTP library.
"""

__version__ = "0.1.0"
