// TinyML edge bridge firmware for the Arduino Nano 33 BLE / BLE Sense (template 1.0.0).
//
// This file is copied verbatim into every sketch; everything that changes from one install to
// the next lives in model_config.h and model_data.cpp (rendered by hal/arduino/sketch.py).
// Library: Arduino_TensorFlowLite from tensorflow/tflite-micro-arduino-examples (see README).
//
// What it prints on the USB serial port: one JSON object per line, the device line protocol of
// hal/protocol.py (same keys, same order, compact, <= 512 bytes):
//   {"t":"boot","v":1,"sha":"<16 hex>","arena":N,"used":N,"fw":"1.0.0","board":"nano33ble"}
//   {"t":"inf","n":SEQ,"us":LATENCY,"out":[...],"top":I,"label":"..."}
//   {"t":"status","v":1,"sha":"<16 hex>","up":SECONDS,"n":COUNT,"fw":"1.0.0"}
//   {"t":"err","code":"alloc_failed","msg":"AllocateTensors() failed","arena":N}
// TFLM's own diagnostics (MicroPrintf) may appear as plain text lines in between.

#include <Arduino.h>
#include <TensorFlowLite.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "model_config.h"
#include "model_data.h"

#if TINYML_INPUT_CAMERA
#include <Arduino_OV767X.h>
#endif

// The host opens the port some time after the board enumerates: wait this long for it.
#define TINYML_WAIT_FOR_HOST_MS 4000
#define TINYML_MAX_LINE 512  // protocol limit, newline included
#define TINYML_PROTOCOL_VERSION 1

// ------------------------------------------------------------------------------- state

alignas(16) static uint8_t g_arena[TINYML_ARENA_BYTES];
static tflite::MicroInterpreter* g_interpreter = nullptr;
static TfLiteTensor* g_input = nullptr;

static bool g_failed = false;         // setup failed: only the error line is repeated
static uint32_t g_booted_at = 0;      // millis() when the boot line was first printed
static uint32_t g_last_announce = 0;  // last boot (or failure) line
static uint32_t g_last_status = 0;
static uint32_t g_last_inference = 0;
static uint32_t g_seq = 0;            // inferences attempted
static size_t g_used_bytes = 0;
static const char* g_sha = TINYML_MODEL_SHA;  // the running model's (a hot-swap may change it)

// One line is assembled here. The capacity exceeds the protocol limit so that an over-long
// inference line can be measured and then shortened exactly as hal/protocol.py does.
static char g_line[TINYML_MAX_LINE + 96];
static size_t g_line_len = 0;
static bool g_line_overflow = false;
static char g_fail_line[TINYML_MAX_LINE];
static size_t g_fail_len = 0;

#if TINYML_INPUT_CAMERA
#define TINYML_QCIF_W 176
#define TINYML_QCIF_H 144
static uint8_t g_frame[TINYML_QCIF_W * TINYML_QCIF_H];  // grayscale: one byte per pixel
static tinyml_input_t g_pixel_value[256];  // pixel -> input element (model's quantisation)
#endif

// Prototypes written out so that the Arduino builder does not generate its own.
static void lb_reset();
static void lb_char(char c);
static void lb_str(const char* s);
static void lb_uint(uint32_t v);
static void lb_float(double v);
static uint64_t scaled_round(double v, int exponent);
static size_t uint_digits(uint32_t v);
static void emit_line();
static void print_boot();
static void print_status(uint32_t now);
static void fail_begin(const char* code, const char* msg);
static void fail_number(const char* key, uint32_t value);
static void fail_end();
static bool input_matches();
static void fill_input();
static size_t output_count(const TfLiteTensor* t);
static float output_value(const TfLiteTensor* t, size_t i);
static void print_inference(uint32_t seq, uint32_t latency_us, const TfLiteTensor* out);
static void run_inference();
#if TINYML_HOTSWAP  // tinyml_hotswap_run.h, included below
static void hs_boot_fields();
static const char* hs_label(size_t top);
static void hs_fill_input();
static void hs_after_inference(bool ok);
#endif
#if TINYML_INPUT_CAMERA
static void camera_build_lookup(const TfLiteTensor* input);
static void camera_fill(TfLiteTensor* input);
#endif

// ----------------------------------------------------------------------- line building

static void lb_reset() {
  g_line_len = 0;
  g_line_overflow = false;
}

static void lb_char(char c) {
  if (g_line_len < sizeof(g_line)) {
    g_line[g_line_len++] = c;
  } else {
    g_line_overflow = true;
  }
}

static void lb_str(const char* s) {
  while (*s) lb_char(*s++);
}

static void lb_uint(uint32_t v) {
  char digits[10];
  int n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) lb_char(digits[--n]);
}

static size_t uint_digits(uint32_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

// round(v * 10^(5 - exponent)), ties to even: the 6 significant digits of v.
static uint64_t scaled_round(double v, int exponent) {
  int p = 5 - exponent;
  double s = v;
  // Two steps keep 10^p finite for the smallest (subnormal) values.
  if (p > 300) {
    s *= 1e300;
    p -= 300;
  }
  s = p >= 0 ? s * pow(10.0, p) : s / pow(10.0, -p);
  double r = floor(s);
  double d = s - r;
  if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0)) r += 1.0;
  return (uint64_t)r;
}

// The float as hal/protocol.py writes it: 6 significant digits (its _short), then Python's
// repr (shortest digits; exponent form below 1e-4 and from 1e16 on; ".0" on whole numbers).
// mbed's printf is built without %f support, hence this formatter.
static void lb_float(double v) {
  if (!isfinite(v)) {
    lb_str("0.0");
    return;
  }
  if (v == 0.0) {
    lb_str(signbit(v) ? "-0.0" : "0.0");
    return;
  }
  if (v < 0) {
    lb_char('-');
    v = -v;
  }
  int e = (int)floor(log10(v));
  uint64_t m = scaled_round(v, e);
  if (m >= 1000000ULL) {
    e += 1;
    m = scaled_round(v, e);
  } else if (m < 100000ULL) {
    e -= 1;
    m = scaled_round(v, e);
  }
  if (m >= 1000000ULL) {  // rounding carried into a 7th digit
    m /= 10;
    e += 1;
  }
  char digits[6];
  for (int i = 5; i >= 0; i--) {
    digits[i] = (char)('0' + m % 10);
    m /= 10;
  }
  int nd = 6;
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  int decpt = e + 1;  // digits before the decimal point
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      lb_str("0.");
      for (int i = 0; i < -decpt; i++) lb_char('0');
      for (int i = 0; i < nd; i++) lb_char(digits[i]);
    } else if (decpt >= nd) {
      for (int i = 0; i < nd; i++) lb_char(digits[i]);
      for (int i = nd; i < decpt; i++) lb_char('0');
      lb_str(".0");
    } else {
      for (int i = 0; i < decpt; i++) lb_char(digits[i]);
      lb_char('.');
      for (int i = decpt; i < nd; i++) lb_char(digits[i]);
    }
  } else {
    lb_char(digits[0]);
    if (nd > 1) {
      lb_char('.');
      for (int i = 1; i < nd; i++) lb_char(digits[i]);
    }
    int x = decpt - 1;
    lb_char('e');
    lb_char(x < 0 ? '-' : '+');
    if (x < 0) x = -x;
    if (x < 10) lb_char('0');
    lb_uint((uint32_t)x);
  }
}

static void emit_line() {
  // One write per line; the newline alone ends it (the host also accepts \r\n).
  Serial.write((const uint8_t*)g_line, g_line_len);
  Serial.write('\n');
}

// ------------------------------------------------------------------------ fixed lines

static void print_boot() {
  lb_reset();
  lb_str("{\"t\":\"boot\",\"v\":");
  lb_uint(TINYML_PROTOCOL_VERSION);
  lb_str(",\"sha\":\"");
  lb_str(g_sha);
  lb_str("\",\"arena\":");
  lb_uint(TINYML_ARENA_BYTES);
  lb_str(",\"used\":");
  lb_uint((uint32_t)g_used_bytes);
  lb_str(",\"fw\":\"" TINYML_TEMPLATE_VERSION "\",\"board\":\"" TINYML_BOARD "\"");
#if TINYML_HOTSWAP
  hs_boot_fields();
#endif
  lb_char('}');
  emit_line();
}

static void print_status(uint32_t now) {
  lb_reset();
  lb_str("{\"t\":\"status\",\"v\":");
  lb_uint(TINYML_PROTOCOL_VERSION);
  lb_str(",\"sha\":\"");
  lb_str(g_sha);
  lb_str("\",\"up\":");
  lb_uint(now / 1000);
  lb_str(",\"n\":");
  lb_uint(g_seq);
  lb_str(",\"fw\":\"" TINYML_TEMPLATE_VERSION "\"}");
  emit_line();
}

// An error that stops the sketch: printed now and repeated, since nothing else will run.
static void fail_begin(const char* code, const char* msg) {
  lb_reset();
  lb_str("{\"t\":\"err\",\"code\":\"");
  lb_str(code);
  lb_str("\",\"msg\":\"");
  lb_str(msg);
  lb_char('"');
}

static void fail_number(const char* key, uint32_t value) {
  lb_str(",\"");
  lb_str(key);
  lb_str("\":");
  lb_uint(value);
}

static void fail_end() {
  lb_char('}');
  memcpy(g_fail_line, g_line, g_line_len);
  g_fail_len = g_line_len;
  g_failed = true;
  g_last_announce = millis();
  emit_line();
}

// ------------------------------------------------------------------------------ input

static bool input_matches() {
  static const int kShape[TINYML_INPUT_RANK] = TINYML_INPUT_SHAPE;
  if (g_input == nullptr || g_input->type != TINYML_INPUT_TFLITE_TYPE) return false;
  if (g_input->bytes != sizeof(tinyml_input_t) * (size_t)TINYML_INPUT_ELEMENTS) return false;
  if (g_input->dims == nullptr || g_input->dims->size != TINYML_INPUT_RANK) return false;
  for (int i = 0; i < TINYML_INPUT_RANK; i++) {
    if (g_input->dims->data[i] != kShape[i]) return false;
  }
  return true;
}

static void fill_input() {
#if TINYML_INPUT_CAMERA
  camera_fill(g_input);
#elif TINYML_INPUT_VECTOR_COUNT > 0
  const size_t index = (size_t)((g_seq - 1) % TINYML_INPUT_VECTOR_COUNT);
  memcpy(g_input->data.raw, kTinymlInputVectors[index], sizeof(kTinymlInputVectors[0]));
#else
  // No vectors supplied: a constant input of real value 0.
  tinyml_input_t* data = (tinyml_input_t*)g_input->data.raw;
  for (size_t i = 0; i < (size_t)TINYML_INPUT_ELEMENTS; i++) {
#if TINYML_INPUT_QUANTISED
    data[i] = (tinyml_input_t)g_input->params.zero_point;
#else
    data[i] = (tinyml_input_t)0;
#endif
  }
#endif
}

#if TINYML_INPUT_CAMERA
// Each pixel value 0..255 -> its real value (TINYML_CAMERA_REAL_LO..HI) -> quantised with the
// input tensor's own scale and zero point, once at boot.
static void camera_build_lookup(const TfLiteTensor* input) {
  const float lo = (float)TINYML_CAMERA_REAL_LO;
  const float step = ((float)TINYML_CAMERA_REAL_HI - lo) / 255.0f;
  for (int p = 0; p < 256; p++) {
    const float real = lo + (float)p * step;
#if TINYML_INPUT_QUANTISED
    const float scaled = real / input->params.scale;
    int32_t q = (int32_t)roundf(scaled) + input->params.zero_point;
    const int32_t q_min = (TINYML_INPUT_TFLITE_TYPE == kTfLiteInt8) ? -128 : 0;
    const int32_t q_max = (TINYML_INPUT_TFLITE_TYPE == kTfLiteInt8) ? 127 : 255;
    if (q < q_min) q = q_min;
    if (q > q_max) q = q_max;
    g_pixel_value[p] = (tinyml_input_t)q;
#else
    (void)input;
    g_pixel_value[p] = real;
#endif
  }
}

// QCIF 176x144 grayscale -> the centred 144x144 square -> 96x96 by averaging 2x2 pixels at
// every 1.5th position (keeps the whole field of view of the square).
static void camera_fill(TfLiteTensor* input) {
  Camera.readFrame(g_frame);
  tinyml_input_t* data = (tinyml_input_t*)input->data.raw;
  const int x0 = (TINYML_QCIF_W - TINYML_QCIF_H) / 2;
  for (int oy = 0; oy < 96; oy++) {
    const int sy = (oy * 3) / 2;
    for (int ox = 0; ox < 96; ox++) {
      const int sx = x0 + (ox * 3) / 2;
      const uint8_t* p = &g_frame[sy * TINYML_QCIF_W + sx];
      const int sum = p[0] + p[1] + p[TINYML_QCIF_W] + p[TINYML_QCIF_W + 1];
      data[oy * 96 + ox] = g_pixel_value[(sum + 2) / 4];
    }
  }
}
#endif

// ----------------------------------------------------------------------------- output

static size_t output_count(const TfLiteTensor* t) {
  size_t n = 1;
  if (t->dims == nullptr) return 0;
  for (int i = 0; i < t->dims->size; i++) n *= (size_t)t->dims->data[i];
  return n;
}

// Dequantised: (q - zero_point) * scale in float, as the TFLM examples do; integer outputs
// without a scale are passed through.
static float output_value(const TfLiteTensor* t, size_t i) {
  const float scale = t->params.scale;
  const int32_t zp = t->params.zero_point;
  int32_t q;
  switch (t->type) {
    case kTfLiteFloat32:
      return t->data.f[i];
    case kTfLiteInt8:
      q = t->data.int8[i];
      break;
    case kTfLiteUInt8:
      q = t->data.uint8[i];
      break;
    case kTfLiteInt16:
      q = t->data.i16[i];
      break;
    case kTfLiteInt32:
      q = t->data.i32[i];
      break;
    default:
      return 0.0f;
  }
  if (scale == 0.0f) return (float)q;
  return (float)(q - zp) * scale;
}

// {"t":"inf","n":..,"us":..,"out":[..],"top":..,"label":".."} -- when the line would exceed
// 512 bytes, trailing outputs are dropped and "cut" says how many, like hal/protocol.py.
static void print_inference(uint32_t seq, uint32_t latency_us, const TfLiteTensor* out) {
  const size_t count = output_count(out);
  size_t top = 0;
  float best = 0.0f;
  for (size_t i = 0; i < count; i++) {
    const float v = output_value(out, i);
    if (i == 0 || v > best) {
      best = v;
      top = i;
    }
  }
  const char* label = "";
#if TINYML_HOTSWAP
  label = hs_label(top);
#elif TINYML_LABEL_COUNT > 0
  if (top < (size_t)TINYML_LABEL_COUNT) label = kTinymlLabels[top];
#endif
  const size_t label_len = strlen(label);

  lb_reset();
  lb_str("{\"t\":\"inf\",\"n\":");
  lb_uint(seq);
  lb_str(",\"us\":");
  lb_uint(latency_us);
  lb_str(",\"out\":[");
  const size_t base = g_line_len;
  // End offset of the list after each output; at 4+ bytes per output, 160 always suffice.
  static size_t ends[160];
  size_t fitted = 0;
  for (size_t i = 0; i < count && fitted < 160; i++) {
    if (i) lb_char(',');
    lb_float((double)output_value(out, i));
    if (g_line_overflow) break;
    ends[fitted++] = g_line_len;
  }
  // ],"top":T,"label":"L"}  or  ],"top":T,"label":"L","cut":C}
  const size_t fixed = 8 + uint_digits((uint32_t)top) + 10 + label_len + 1 + 1;
  size_t keep = fitted;
  for (;;) {
    size_t total = (keep ? ends[keep - 1] : base) + fixed;
    if (keep < count) total += 7 + uint_digits((uint32_t)(count - keep));
    if (total + 1 <= TINYML_MAX_LINE || keep == 0) break;
    keep--;
  }
  g_line_len = keep ? ends[keep - 1] : base;
  g_line_overflow = false;
  lb_str("],\"top\":");
  lb_uint((uint32_t)top);
  lb_str(",\"label\":\"");
  lb_str(label);
  lb_char('"');
  if (keep < count) {
    lb_str(",\"cut\":");
    lb_uint((uint32_t)(count - keep));
  }
  lb_char('}');
  emit_line();
}

static void run_inference() {
  const uint32_t seq = ++g_seq;
#if TINYML_HOTSWAP
  hs_fill_input();
#else
  fill_input();
#endif
  const uint32_t started = micros();
  const TfLiteStatus status = g_interpreter->Invoke();
  const uint32_t latency = micros() - started;
  if (status != kTfLiteOk) {
    lb_reset();
    lb_str("{\"t\":\"err\",\"code\":\"invoke_failed\",\"msg\":\"Invoke() failed\",\"n\":");
    lb_uint(seq);
    lb_char('}');
    emit_line();
#if TINYML_HOTSWAP
    hs_after_inference(false);
#endif
    return;
  }
  print_inference(seq, latency, g_interpreter->output(0));
#if TINYML_HOTSWAP
  hs_after_inference(true);
#endif
}

#if TINYML_HOTSWAP
#include "tinyml_hotswap_run.h"
#endif

// ----------------------------------------------------------------------- setup / loop

void setup() {
  Serial.begin(115200);  // USB CDC: the rate is ignored
  const uint32_t start = millis();
  while (!Serial && millis() - start < TINYML_WAIT_FOR_HOST_MS) {
    delay(10);
  }
#if TINYML_HOTSWAP
  hs_setup();  // the newest valid slot's model, else the compiled-in one
  return;
#endif

  const tflite::Model* model = tflite::GetModel(g_model);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    fail_begin("model_invalid", "model schema version mismatch");
    fail_number("schema", (uint32_t)model->version());
    fail_number("expected", (uint32_t)TFLITE_SCHEMA_VERSION);
    fail_end();
    return;
  }

  static tflite::MicroMutableOpResolver<TINYML_OP_COUNT> resolver;
  bool ops_ok = true;
  TINYML_REGISTER_OPS(resolver, ops_ok);
  if (!ops_ok) {
    fail_begin("model_invalid", "op registration failed");
    fail_number("ops", (uint32_t)TINYML_OP_COUNT);
    fail_end();
    return;
  }

  static tflite::MicroInterpreter interpreter(model, resolver, g_arena, TINYML_ARENA_BYTES);
  g_interpreter = &interpreter;
  if (g_interpreter->AllocateTensors() != kTfLiteOk) {
    fail_begin("alloc_failed", "AllocateTensors() failed");
    fail_number("arena", (uint32_t)TINYML_ARENA_BYTES);
    fail_end();
    return;
  }
  g_used_bytes = g_interpreter->arena_used_bytes();

  g_input = g_interpreter->input(0);
  if (!input_matches()) {
    fail_begin("bad_input", "input tensor does not match the sketch");
    fail_number("bytes", g_input ? (uint32_t)g_input->bytes : 0);
    fail_number("expected", (uint32_t)(sizeof(tinyml_input_t) * TINYML_INPUT_ELEMENTS));
    fail_end();
    return;
  }

#if TINYML_INPUT_CAMERA
  if (!Camera.begin(QCIF, GRAYSCALE, 5, OV7675)) {
    fail_begin("camera_failed", "OV7675 camera did not start");
    fail_end();
    return;
  }
  camera_build_lookup(g_input);
#endif

  print_boot();
  g_booted_at = millis();
  g_last_announce = g_booted_at;
  g_last_status = g_booted_at;
  g_last_inference = g_booted_at;
}

void loop() {
#if TINYML_HOTSWAP
  if (hs_poll()) return;  // frames from the host; no inference while a transfer runs
#endif
  const uint32_t now = millis();
  if (g_failed) {
    // Keep saying why nothing runs: the host may have opened the port after the first time.
    if (now - g_last_announce >= TINYML_REANNOUNCE_MS) {
      g_last_announce = now;
      memcpy(g_line, g_fail_line, g_fail_len);
      g_line_len = g_fail_len;
      emit_line();
    }
    return;
  }
  if (now - g_booted_at < TINYML_REANNOUNCE_UNTIL_MS &&
      now - g_last_announce >= TINYML_REANNOUNCE_MS) {
    g_last_announce = now;
    print_boot();
  }
  if (now - g_last_status >= TINYML_STATUS_PERIOD_MS) {
    g_last_status = now;
    print_status(now);
  }
  if (g_seq == 0 || now - g_last_inference >= TINYML_INFERENCE_PERIOD_MS) {
    g_last_inference = now;
    run_inference();
  }
}
