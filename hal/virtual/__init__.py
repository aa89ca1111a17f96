"""Hardware-free stand-ins, shipped so tests, demos and users' CI run without a board.

* ``hal.virtual.board`` -- a virtual Nano 33 BLE: a process owning a pseudo-terminal as its USB
  serial port, with the 1200-bps touch, bootloader re-enumeration and a sketch that runs the
  model with the real TFLM interpreter (``hal.virtual.mcu``).
* ``hal.virtual.arduino_cli`` -- a stand-in ``arduino-cli`` answering the real command lines in
  the real JSON formats (console script ``tinyml-fake-arduino-cli``).
* ``hal.virtual.image`` -- the firmware image the stand-in compiles and the board boots.
* ``hal.virtual.driver`` -- the ``virtual-nano33ble`` driver: the real ``nano33ble`` driver
  pointed at the two stand-ins.
"""
