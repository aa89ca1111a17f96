// Host declaration header: the Arduino_OV767X camera API the TinyML sketch uses, as in
// arduino-libraries/Arduino_OV767X with OV7675 support (begin's fourth argument, PR #30).
#ifndef TINYML_HOST_ARDUINO_OV767X_H_
#define TINYML_HOST_ARDUINO_OV767X_H_

#include <Arduino.h>

enum { YUV422 = 0, RGB444 = 1, RGB565 = 2, GRAYSCALE = 4 };
enum { VGA = 0, CIF = 1, QVGA = 2, QCIF = 3, QQVGA = 4 };
enum { OV7670 = 0, OV7675 = 1 };

class OV767X {
 public:
  OV767X();
  virtual ~OV767X();
  // Returns 0 on failure. Supported fps on the Nano 33 BLE: 1 and 5.
  int begin(int resolution, int format, int fps, int camera_name = OV7670);
  void end();
  int width() const;
  int height() const;
  int bitsPerPixel() const;
  int bytesPerPixel() const;
  // GRAYSCALE: one byte per pixel (the U/V bytes of YUV422 are dropped).
  void readFrame(void* buffer);
};

extern OV767X Camera;

#endif  // TINYML_HOST_ARDUINO_OV767X_H_
