"""Arduino Nano 33 BLE family: one module per concern, like ``hal.rpi``.

* ``cli`` -- the thin arduino-cli adapter (the command lines, run with deadlines);
  ``cli_output`` -- what arduino-cli prints, parsed and classified.
* ``build_slot`` -- the persistent build path that lets an identical model skip its compile.
* ``sketch`` -- rendering the firmware template.
* ``discovery`` -- which boards are attached (pyserial's port list plus virtual boards).
* ``serial_link`` -- opening a board's port (DTR asserted) and reading it with deadlines.
* ``settings``, ``tools`` -- the driver's settings and its tool and library checks
  (``libraries`` reads the installed libraries' headers).
* ``flash``, ``verified``, ``boot``, ``observe`` -- uploading with rollback, the store of
  verified images, boot verification, observation.
* ``hotswap``, ``hotswap_link``, ``hotswap_protocol`` -- a new model into a flash slot of a
  running hot-swap firmware, without compiling or uploading.
* ``driver`` -- the ``nano33ble`` driver: the install skeleton's phases filled in.
"""
