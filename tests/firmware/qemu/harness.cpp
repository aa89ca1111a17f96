// The 32-bit arena harness: TFLM (the Arduino library's own sources, compiled with the
// Nano 33 BLE's flags) run by QEMU on a Cortex-M4 (mps2-an386). It includes a sketch folder
// rendered by hal/arduino/sketch.py -- the model array, the op registration and the arena
// size exactly as the board compiles them -- and prints one JSON line on semihosting stdout:
//   compiled_ok / used_at_compiled: AllocateTensors() in the arena the driver compiles in;
//   min_arena / used_at_min: the smallest arena that allocates (bisection);
//   ticks over HARNESS_INFERENCES invocations and the calibration loop's ticks, so the driver
//   can turn SysTick ticks into emulated instructions (QEMU -icount: not real cycles).
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#ifdef HARNESS_RECORD
#include "tensorflow/lite/micro/recording_micro_allocator.h"
#endif
#include "tensorflow/lite/schema/schema_generated.h"

#include "model_config.h"
#include "model_data.h"

#ifndef HARNESS_INFERENCES
#define HARNESS_INFERENCES 2
#endif
#define HARNESS_CALIBRATION_LOOPS 1000000u  // 2 instructions each: subs + bne

extern "C" void harness_ticks_start(void);
extern "C" void _exit(int);
extern "C" uint64_t harness_ticks(void);

// The library's DebugLog (system_setup.cpp) prints to the Arduino Serial: ours goes to
// semihosting stderr, silenced while the bisection provokes allocation failures.
static bool g_quiet = false;
extern "C" void DebugLog(const char* s) {
  if (!g_quiet) fputs(s, stderr);
}
// micro_time.cpp needs the library's peripherals; nothing here reads the time.
namespace tflite {
uint32_t ticks_per_second() { return 0; }
uint32_t GetCurrentTimeTicks() { return 0; }
}  // namespace tflite

#define HARNESS_MAX_ARENA (TINYML_ARENA_BYTES * 2 + 65536)
alignas(16) static uint8_t g_arena[HARNESS_MAX_ARENA];
static tflite::MicroMutableOpResolver<TINYML_OP_COUNT> g_resolver;

static bool try_alloc(const tflite::Model* model, size_t bytes, size_t* used) {
  tflite::MicroInterpreter interpreter(model, g_resolver, g_arena, bytes);
  const bool ok = interpreter.AllocateTensors() == kTfLiteOk;
  *used = ok ? interpreter.arena_used_bytes() : 0;
  return ok;
}

static uint64_t calibration_ticks() {
  harness_ticks_start();
  uint32_t n = HARNESS_CALIBRATION_LOOPS;
  __asm volatile("1: subs %0, %0, #1\n bne 1b\n" : "+r"(n) : : "cc");
  return harness_ticks();
}

extern "C" int harness_main(void) {
  const tflite::Model* model = tflite::GetModel(g_model);
  bool ops_ok = true;
  TINYML_REGISTER_OPS(g_resolver, ops_ok);
  if (!ops_ok) {
    printf("{\"error\":\"op registration failed\"}\n");
    return 3;
  }
  size_t used_compiled = 0;
  const bool compiled_ok = try_alloc(model, TINYML_ARENA_BYTES, &used_compiled);

  g_quiet = true;
  size_t lo = 0, hi = HARNESS_MAX_ARENA, used_hi = 0;
  if (!try_alloc(model, hi, &used_hi)) {
    g_quiet = false;
    printf("{\"error\":\"no allocation within %u bytes\"}\n", (unsigned)hi);
    return 4;
  }
  while (hi - lo > 1) {  // invariant: lo fails, hi allocates
    const size_t mid = lo + (hi - lo) / 2;
    size_t used = 0;
    if (try_alloc(model, mid, &used)) {
      hi = mid;
      used_hi = used;
    } else {
      lo = mid;
    }
  }
  g_quiet = false;

  // Inferences in the compiled arena (or the smallest one if that failed).
  tflite::MicroInterpreter interpreter(model, g_resolver, g_arena,
                                       compiled_ok ? TINYML_ARENA_BYTES : hi);
  bool invoke_ok = interpreter.AllocateTensors() == kTfLiteOk;
  TfLiteTensor* input = interpreter.input(0);
#if TINYML_INPUT_VECTOR_COUNT > 0 && !TINYML_INPUT_CAMERA
  if (input != nullptr && input->bytes == sizeof(kTinymlInputVectors[0])) {
    memcpy(input->data.raw, kTinymlInputVectors[0], sizeof(kTinymlInputVectors[0]));
  }
#else
  if (input != nullptr) memset(input->data.raw, 0, input->bytes);
#endif
  uint64_t ticks = 0;
  if (invoke_ok) {
    harness_ticks_start();
    for (int i = 0; i < HARNESS_INFERENCES && invoke_ok; i++) {
      invoke_ok = interpreter.Invoke() == kTfLiteOk;
    }
    ticks = harness_ticks();
  }
  const uint64_t cal = calibration_ticks();

  printf("{\"sha\":\"%s\",\"arena_compiled\":%u,\"compiled_ok\":%s,\"used_at_compiled\":%u,"
         "\"min_arena\":%u,\"used_at_min\":%u,\"inferences\":%d,\"invoke_ok\":%s,"
         "\"ticks\":%llu,\"calibration_instructions\":%u,\"calibration_ticks\":%llu,"
         "\"pointer_bytes\":%u}\n",
         TINYML_MODEL_SHA, (unsigned)TINYML_ARENA_BYTES, compiled_ok ? "true" : "false",
         (unsigned)used_compiled, (unsigned)hi, (unsigned)used_hi, HARNESS_INFERENCES,
         invoke_ok ? "true" : "false", (unsigned long long)ticks,
         2u * HARNESS_CALIBRATION_LOOPS, (unsigned long long)cal, (unsigned)sizeof(void*));
  fflush(stdout);
#ifdef HARNESS_RECORD
  {  // the allocation breakdown by type, on stderr (for fitting the 32-bit estimate)
    tflite::RecordingMicroAllocator* rec =
        tflite::RecordingMicroAllocator::Create(g_arena, HARNESS_MAX_ARENA);
    tflite::MicroInterpreter recorded(model, g_resolver, rec);
    if (recorded.AllocateTensors() == kTfLiteOk) rec->PrintAllocations();
    fflush(stdout);
    fflush(stderr);
    _exit(0);  // the interpreters above share the overwritten arena: no destructors
  }
#endif
  return 0;
}
