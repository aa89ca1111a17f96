// Host run of the hot-swap firmware's slot and protocol code (tinyml_hotswap.cpp): frames from
// stdin, replies on stdout; after the input, three boot selections; then the flash is written
// to the file named by argv[1]. The test feeds the same frames to the Python board
// (hal/virtual/hotswap_device.py) and compares answers and flash byte for byte.
#include <stdio.h>
#include <string.h>

#include <vector>

#include "Arduino.h"
#include "mbed.h"
#include "tinyml_hotswap.h"

alignas(4096) uint8_t g_host_flash[HS_HOST_FLASH_BYTES];
static std::vector<uint8_t> g_input;
static size_t g_pos = 0;

int HsSerial::available() { return (int)(g_input.size() - g_pos); }
int HsSerial::read() { return g_pos < g_input.size() ? g_input[g_pos++] : -1; }
size_t HsSerial::write(uint8_t c) { return fputc(c, stdout) == EOF ? 0 : 1; }
size_t HsSerial::write(const uint8_t* data, size_t n) { return fwrite(data, 1, n, stdout); }
size_t HsSerial::print(const char* text) { return fputs(text, stdout) < 0 ? 0 : strlen(text); }
HsSerial Serial;

namespace mbed {
int FlashIAP::erase(uint32_t addr, uint32_t size) {
  if (addr % 4096 || size % 4096) return -1;
  memset((void*)(uintptr_t)addr, 0xFF, size);
  return 0;
}
int FlashIAP::program(const void* buffer, uint32_t addr, uint32_t size) {
  if (addr % 4 || size % 4) return -1;
  uint8_t* dst = (uint8_t*)(uintptr_t)addr;
  const uint8_t* src = (const uint8_t*)buffer;
  for (uint32_t i = 0; i < size; i++) dst[i] &= src[i];
  return 0;
}
}  // namespace mbed

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  memset(g_host_flash, 0xFF, sizeof(g_host_flash));
  int c;
  while ((c = getchar()) != EOF) g_input.push_back((uint8_t)c);
  if (!tinyml_hs_begin()) return 3;
  uint8_t running = TINYML_HS_BUILTIN;
  while (Serial.available() > 0) {
    const int slot = tinyml_hs_poll(running);
    if (slot >= 0) {
      running = (uint8_t)slot;
      printf("{\"activated\":%d}\n", slot);
    }
  }
  for (int i = 0; i < 3; i++) {
    TinymlHsModel m;
    tinyml_hs_select(&m);
    printf("{\"select\":%u,\"sha\":\"%s\"}\n", (unsigned)m.slot, m.sha);
  }
  FILE* out = fopen(argv[1], "wb");
  if (out == nullptr) return 4;
  fwrite(g_host_flash, 1, sizeof(g_host_flash), out);
  fclose(out);
  return 0;
}
