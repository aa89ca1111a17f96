// Host stand-in of mbed's FlashIAP and Watchdog for tinyml_hotswap.cpp: the flash is a static
// array below 4 GB (the test links with -no-pie) with the nRF52840's rules: 4 KB pages erase
// to 0xFF, programming clears bits only, in whole aligned words.
#ifndef HS_HOST_MBED_H_
#define HS_HOST_MBED_H_

#include <stdint.h>

#define HS_HOST_FLASH_BYTES (2u * 131072u)
extern uint8_t g_host_flash[HS_HOST_FLASH_BYTES];
#define FLASHIAP_APP_ROM_END_ADDR ((uint32_t)(uintptr_t)g_host_flash)

namespace mbed {

class FlashIAP {
 public:
  int init() { return 0; }
  uint32_t get_flash_start() const { return (uint32_t)(uintptr_t)g_host_flash; }
  uint32_t get_flash_size() const { return HS_HOST_FLASH_BYTES; }
  uint32_t get_sector_size(uint32_t) const { return 4096; }
  int erase(uint32_t addr, uint32_t size);
  int program(const void* buffer, uint32_t addr, uint32_t size);
};

class Watchdog {
 public:
  static Watchdog& get_instance() {
    static Watchdog w;
    return w;
  }
  bool start(uint32_t) { return true; }
  void kick() {}
};

}  // namespace mbed

#endif  // HS_HOST_MBED_H_
