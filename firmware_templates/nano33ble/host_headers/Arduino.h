// Host declaration header: the part of the Arduino API (ArduinoCore-mbed) that the TinyML
// sketch uses, with the real signatures. For `g++ -fsyntax-only` checks of rendered sketches
// on a machine without the Arduino toolchain; never compiled into firmware.
#ifndef TINYML_HOST_ARDUINO_H_
#define TINYML_HOST_ARDUINO_H_

#include <stddef.h>
#include <stdint.h>

typedef uint8_t byte;

unsigned long millis(void);
unsigned long micros(void);
void delay(unsigned long ms);

namespace arduino {

// Print + the USB CDC port (arduino::SerialUSB_ on the Nano 33 BLE).
class HostSerial {
 public:
  void begin(unsigned long baudrate);
  size_t write(uint8_t c);
  size_t write(const uint8_t* buffer, size_t size);
  operator bool();
};

}  // namespace arduino

extern arduino::HostSerial Serial;

#endif  // TINYML_HOST_ARDUINO_H_
