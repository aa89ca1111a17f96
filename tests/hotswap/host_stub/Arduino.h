// Host stand-in of the Arduino core for tinyml_hotswap.cpp: Serial reads the bytes the test
// wrote to stdin and writes to stdout.
#ifndef HS_HOST_ARDUINO_H_
#define HS_HOST_ARDUINO_H_

#include <stddef.h>
#include <stdint.h>

class HsSerial {
 public:
  int available();
  int read();
  size_t write(uint8_t c);
  size_t write(const uint8_t* data, size_t n);
  size_t print(const char* text);
};

extern HsSerial Serial;

#endif  // HS_HOST_ARDUINO_H_
