"""The Nano 33 BLE sketch template (tinyml_sketch.ino), its README and the host declaration
headers; rendered by :mod:`hal.arduino.sketch`. A package only so the files ship in the wheel."""
