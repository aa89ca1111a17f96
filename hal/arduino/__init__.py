"""Arduino Nano 33 BLE family: arduino-cli adapter, port discovery, serial link, driver.

* ``hal.arduino.cli`` -- the thin arduino-cli adapter (compile, upload, board list) and the
  persistent build slot that lets an identical model skip its compile.
* ``hal.arduino.discovery`` -- which Nano 33 BLE boards are attached (pyserial's port list
  plus the virtual-port records the hardware-free board publishes).
* ``hal.arduino.serial_link`` -- opening and reading a board's port with deadlines.
* ``hal.arduino.sketch`` -- rendering the firmware template (firmware engineer).
* ``hal.arduino.driver`` -- the ``nano33ble`` driver.
"""
