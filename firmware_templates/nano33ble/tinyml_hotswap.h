// Hot-swap firmware: model slots in flash and the serial protocol that fills them
// (template 1.0.0, hot-swap variant). Implemented in tinyml_hotswap.cpp; the protocol, the
// slot layout and every reply are specified in hal/arduino/hotswap_protocol.py.
#ifndef TINYML_HOTSWAP_H_
#define TINYML_HOTSWAP_H_

#include <stddef.h>
#include <stdint.h>

#define TINYML_HS_BUILTIN 255  // "slot" of the compiled-in model

// A model the firmware can start: the compiled-in one or a slot's (flatbuffer in flash).
struct TinymlHsModel {
  const unsigned char* model;
  uint32_t model_len;
  uint8_t slot;            // 0, 1 or TINYML_HS_BUILTIN
  char sha[17];            // sha256 prefix of the model, 16 hex digits
  const char* labels;      // label_count NUL-terminated, JSON-escaped labels
  uint16_t label_count;
  const uint8_t* vectors;  // vector_count input vectors of vector_bytes each
  uint16_t vector_count;
  uint32_t vector_bytes;
};

// Once, from setup(): opens the flash (slots at the top of the application flash) and starts
// the watchdog that resets a model which hard-faults. False when the slots overlap the
// program (hot-swap then answers no frame; the compiled-in model still runs).
bool tinyml_hs_begin();
// At reset: the newest valid slot (one boot attempt burnt while unconfirmed), else the
// compiled-in model. Slots that used up their attempts are rejected (slot_rejected line).
void tinyml_hs_select(TinymlHsModel* out);
// The model of a valid, unrejected slot (false otherwise), or the compiled-in one.
bool tinyml_hs_load(uint8_t slot, TinymlHsModel* out);
// The slot's model failed to start (reason: alloc_failed, model_invalid, bad_input): mark it
// rejected, print slot_rejected, and return what to start instead.
uint8_t tinyml_hs_reject(uint8_t slot, const char* reason);
// The slot's model ran an inference: it never counts as a failed boot again.
void tinyml_hs_confirm(uint8_t slot);
// Serial input: answers frames; returns the slot an ACTIVATE asks for, or -1.
int tinyml_hs_poll(uint8_t running);
// A transfer has begun and is not committed yet (loop() then runs no inference: a long
// Invoke() would leave the USB reads, and so the host's writes, waiting).
bool tinyml_hs_transfer_active();
// Watchdog refresh (from loop()).
void tinyml_hs_kick();
uint32_t tinyml_hs_slot_bytes();

#endif  // TINYML_HOTSWAP_H_
