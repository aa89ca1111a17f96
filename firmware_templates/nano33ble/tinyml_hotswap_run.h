// Hot-swap variant: starting, stopping and switching the model, included by tinyml_sketch.ino
// (it uses the sketch's line builders and state). The slots and the protocol are in
// tinyml_hotswap.cpp. What runs is a TinymlHsModel: the compiled-in model or a slot's, whose
// input type and shape come from the interpreter (not from model_config.h) and whose labels
// and input vectors come from the slot.
#ifndef TINYML_HOTSWAP_RUN_H_
#define TINYML_HOTSWAP_RUN_H_

#include <new>

#include "tinyml_hotswap.h"

alignas(tflite::MicroInterpreter) static uint8_t g_hs_interp_mem[sizeof(tflite::MicroInterpreter)];
static tflite::MicroMutableOpResolver<TINYML_OP_COUNT> g_hs_resolver;
static TinymlHsModel g_hs;             // the model that runs (or failed to start)
static bool g_hs_confirm_pending = false;

static void hs_stop() {
  if (g_interpreter != nullptr) {
    g_interpreter->~MicroInterpreter();
    g_interpreter = nullptr;
  }
  g_input = nullptr;
}

// The compiled-in model keeps the compiled input check; a slot's model needs an input type
// the sketch can feed and vectors of the input tensor's size.
static bool hs_input_ok() {
  if (g_hs.slot == TINYML_HS_BUILTIN) return input_matches();
  if (g_input == nullptr) return false;
  if (g_input->type != kTfLiteInt8 && g_input->type != kTfLiteUInt8 &&
      g_input->type != kTfLiteFloat32) {
    return false;
  }
  return g_hs.vector_count == 0 || g_hs.vector_bytes == g_input->bytes;
}

// nullptr when the model runs, else the reason it did not start.
static const char* hs_try_start() {
  hs_stop();
  const tflite::Model* model = tflite::GetModel(g_hs.model);
  if (model->version() != TFLITE_SCHEMA_VERSION) return "model_invalid";
  g_interpreter = new (g_hs_interp_mem)
      tflite::MicroInterpreter(model, g_hs_resolver, g_arena, TINYML_ARENA_BYTES);
  if (g_interpreter->AllocateTensors() != kTfLiteOk) {
    hs_stop();
    return "alloc_failed";
  }
  g_used_bytes = g_interpreter->arena_used_bytes();
  g_input = g_interpreter->input(0);
  if (!hs_input_ok()) {
    hs_stop();
    return "bad_input";
  }
  return nullptr;
}

// Start the model of `slot`; a slot's model that does not start is rejected and the next one
// (the other slot, then the compiled-in model) is started instead.
static void hs_start(uint8_t slot) {
  tinyml_hs_load(slot, &g_hs);
  for (;;) {
    const char* why = hs_try_start();
    if (why == nullptr) break;
    if (g_hs.slot == TINYML_HS_BUILTIN) {  // as the plain sketch: say why, forever
      fail_begin(why, !strcmp(why, "alloc_failed") ? "AllocateTensors() failed"
                                                   : "the compiled-in model did not start");
      if (!strcmp(why, "alloc_failed")) fail_number("arena", (uint32_t)TINYML_ARENA_BYTES);
      fail_end();
      return;
    }
    tinyml_hs_load(tinyml_hs_reject(g_hs.slot, why), &g_hs);
  }
  g_sha = g_hs.sha;
  g_failed = false;
  g_seq = 0;
  g_hs_confirm_pending = g_hs.slot != TINYML_HS_BUILTIN;
  print_boot();
  g_booted_at = millis();
  g_last_announce = g_booted_at;
  g_last_status = g_booted_at;
  g_last_inference = g_booted_at;
}

static void hs_setup() {
  bool ops_ok = true;
  TINYML_REGISTER_OPS(g_hs_resolver, ops_ok);
  if (!ops_ok) {
    fail_begin("model_invalid", "op registration failed");
    fail_number("ops", (uint32_t)TINYML_OP_COUNT);
    fail_end();
    return;
  }
  tinyml_hs_begin();
  TinymlHsModel chosen;
  tinyml_hs_select(&chosen);
  hs_start(chosen.slot);
}

// From loop(): the watchdog, frames from the host, the switch an ACTIVATE asks for. True
// while a transfer is under way: loop() then returns at once (no inference meanwhile).
static bool hs_poll() {
  tinyml_hs_kick();
  const int slot = tinyml_hs_poll(g_hs.slot);
  if (slot >= 0) hs_start((uint8_t)slot);
  return tinyml_hs_transfer_active();
}

// After an inference: the first one that ran confirms a slot's model.
static void hs_after_inference(bool ok) {
  if (ok && g_hs_confirm_pending) {
    g_hs_confirm_pending = false;
    tinyml_hs_confirm(g_hs.slot);
  }
}

static const char* hs_label(size_t top) {
  if (g_hs.slot == TINYML_HS_BUILTIN) {
#if TINYML_LABEL_COUNT > 0
    if (top < (size_t)TINYML_LABEL_COUNT) return kTinymlLabels[top];
#endif
    return "";
  }
  if (top >= g_hs.label_count) return "";
  const char* p = g_hs.labels;
  for (size_t i = 0; i < top; i++) p += strlen(p) + 1;
  return p;
}

static void hs_fill_input() {
  if (g_hs.slot == TINYML_HS_BUILTIN) {
    fill_input();
    return;
  }
  if (g_hs.vector_count > 0) {
    const size_t index = (size_t)((g_seq - 1) % g_hs.vector_count);
    memcpy(g_input->data.raw, g_hs.vectors + index * g_hs.vector_bytes, g_hs.vector_bytes);
    return;
  }
  if (g_input->type == kTfLiteFloat32) {
    memset(g_input->data.raw, 0, g_input->bytes);
  } else {
    memset(g_input->data.raw, (uint8_t)g_input->params.zero_point, g_input->bytes);
  }
}

// ,"hs":{...} of the boot line: what a host needs to decide on a hot-swap.
static void hs_boot_fields() {
  lb_str(",\"hs\":{\"v\":1,\"slot\":");
  lb_uint(g_hs.slot);
  lb_str(",\"slots\":2,\"slot_bytes\":");
  lb_uint(tinyml_hs_slot_bytes());
  lb_str(",\"opset\":\"" TINYML_OPSET_DIGEST "\",\"ops\":[" TINYML_OPSET_JSON "]}");
}

#endif  // TINYML_HOTSWAP_RUN_H_
