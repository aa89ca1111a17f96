// Host build of a rendered sketch, for tests: the sketch itself plus tiny stand-ins for the
// Arduino core (stdout serial, a simulated clock) and the TFLM interpreter (a stub that
// allocates the tensors the rendered config declares and fills outputs). Everything the stub
// observes goes to stderr as "key value..." records, so tests can check what the sketch fed
// to the interpreter and compare every printed line with hal.protocol's formatter.
//
// Build: g++ -std=gnu++17 -I <host_headers> -I <sketch_dir> host_main.cpp <sketch>/model_data.cpp
// Behaviour is set by environment variables TINYML_STUB_* (see stub_env below).

#include "tinyml_sketch.ino"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// ----------------------------------------------------------------------- environment

static long stub_env(const char* name, long fallback) {
  const char* v = getenv(name);
  return v && *v ? strtol(v, nullptr, 10) : fallback;
}

static void stub_hex(const char* key, const void* data, size_t n) {
  const unsigned char* p = (const unsigned char*)data;
  fprintf(stderr, "%s ", key);
  for (size_t i = 0; i < n; i++) fprintf(stderr, "%02x", p[i]);
  fputc('\n', stderr);
}

// ----------------------------------------------------------------------- Arduino core

static uint64_t g_now_us = 0;

unsigned long millis(void) {
  g_now_us += 100;  // every look at the clock takes a little time, so busy loops progress
  return (unsigned long)(g_now_us / 1000);
}

unsigned long micros(void) {
  g_now_us += 1;
  return (unsigned long)g_now_us;
}

void delay(unsigned long ms) { g_now_us += (uint64_t)ms * 1000; }

namespace arduino {
void HostSerial::begin(unsigned long baudrate) { fprintf(stderr, "serial_begin %lu\n", baudrate); }
size_t HostSerial::write(uint8_t c) {
  fputc(c, stdout);
  if (c == '\n') fprintf(stderr, "line_at_ms %llu\n", (unsigned long long)(g_now_us / 1000));
  return 1;
}
size_t HostSerial::write(const uint8_t* buffer, size_t size) {
  for (size_t i = 0; i < size; i++) write(buffer[i]);
  return size;
}
HostSerial::operator bool() {
  // TINYML_STUB_HOST_AT_MS: the host opens the port this late (default: at once).
  return g_now_us / 1000 >= (uint64_t)stub_env("TINYML_STUB_HOST_AT_MS", 0);
}
}  // namespace arduino

arduino::HostSerial Serial;

// ---------------------------------------------------------------------------- TFLM

namespace tflite {

uint32_t Model::version() const { return (uint32_t)stub_env("TINYML_STUB_SCHEMA", 3); }

const Model* GetModel(const void* buf) {
  static Model model;
  // The linked model array (model_data.cpp) must be the one the sketch hands over.
  fprintf(stderr, "get_model %d\n", buf == (const void*)g_model ? 1 : 0);
  stub_hex("model", g_model, g_model_len);
  return &model;
}

template <unsigned int N>
static TfLiteStatus stub_add(const char* name) {
  fprintf(stderr, "op %s %u\n", name, N);
  return stub_env("TINYML_STUB_OP_FAIL", 0) ? kTfLiteError : kTfLiteOk;
}

#define TINYML_STUB_DEFINE_ADD(name)                    \
  template <unsigned int N>                             \
  TfLiteStatus MicroMutableOpResolver<N>::name() {      \
    return stub_add<N>(#name);                          \
  }
TINYML_HOST_RESOLVER_METHODS(TINYML_STUB_DEFINE_ADD)
#undef TINYML_STUB_DEFINE_ADD

template <unsigned int N>
unsigned int MicroMutableOpResolver<N>::GetRegistrationLength() { return N; }

static TfLiteTensor g_in;
static TfLiteTensor g_out;
static std::vector<unsigned char> g_in_data;
static std::vector<unsigned char> g_out_data;
static unsigned g_invocations = 0;

static TfLiteIntArray* stub_dims(const std::vector<int>& dims) {
  TfLiteIntArray* a = (TfLiteIntArray*)malloc(sizeof(int) * (dims.size() + 1));
  a->size = (int)dims.size();
  for (size_t i = 0; i < dims.size(); i++) a->data[i] = dims[i];
  return a;
}

MicroInterpreter::MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver,
                                   uint8_t* tensor_arena, size_t tensor_arena_size,
                                   MicroResourceVariables* resource_variables,
                                   MicroProfilerInterface* profiler) {
  (void)model;
  (void)op_resolver;
  (void)resource_variables;
  (void)profiler;
  fprintf(stderr, "interpreter arena %zu aligned16 %d\n", tensor_arena_size,
          ((uintptr_t)tensor_arena % 16) == 0 ? 1 : 0);
}

MicroInterpreter::~MicroInterpreter() {}

TfLiteStatus MicroInterpreter::AllocateTensors() {
  if (stub_env("TINYML_STUB_ALLOC_FAIL", 0)) return kTfLiteError;
  static const int shape[TINYML_INPUT_RANK] = TINYML_INPUT_SHAPE;
  g_in.type = TINYML_INPUT_TFLITE_TYPE;
  g_in.dims = stub_dims(std::vector<int>(shape, shape + TINYML_INPUT_RANK));
  g_in.bytes = sizeof(tinyml_input_t) * TINYML_INPUT_ELEMENTS +
               (size_t)stub_env("TINYML_STUB_INPUT_EXTRA_BYTES", 0);
#if TINYML_INPUT_QUANTISED
  g_in.params.scale = (float)TINYML_INPUT_SCALE;
  g_in.params.zero_point = TINYML_INPUT_ZERO_POINT;
#endif
  g_in_data.assign(g_in.bytes, 0xee);
  g_in.data.raw = (char*)g_in_data.data();

  // Output: float32 values from TINYML_STUB_OUT_VALUES ("1.5,-2e-7,..."), else
  // TINYML_STUB_OUT_COUNT int8 values (scale/zero point from TINYML_STUB_OUT_SCALE_E6/_ZP).
  const char* values = getenv("TINYML_STUB_OUT_VALUES");
  if (values && *values) {
    std::vector<float> v;
    for (const char* p = values; *p;) {
      char* end = nullptr;
      v.push_back(strtof(p, &end));
      p = *end == ',' ? end + 1 : end;
    }
    g_out.type = kTfLiteFloat32;
    g_out_data.assign((unsigned char*)v.data(), (unsigned char*)(v.data() + v.size()));
    g_out.dims = stub_dims({1, (int)v.size()});
  } else {
    const int count = (int)stub_env("TINYML_STUB_OUT_COUNT", 4);
    g_out.type = kTfLiteInt8;
    g_out.params.scale = (float)stub_env("TINYML_STUB_OUT_SCALE_E6", 3906) / 1e6f;
    g_out.params.zero_point = (int32_t)stub_env("TINYML_STUB_OUT_ZP", -128);
    g_out_data.assign((size_t)count, 0);
    g_out.dims = stub_dims({1, count});
  }
  g_out.bytes = g_out_data.size();
  g_out.data.raw = (char*)g_out_data.data();
  return kTfLiteOk;
}

TfLiteStatus MicroInterpreter::Invoke() {
  g_invocations++;
  g_now_us += (uint64_t)stub_env("TINYML_STUB_INVOKE_US", 1500);
  stub_hex("input", g_in_data.data(), g_in_data.size());
  if ((long)g_invocations == stub_env("TINYML_STUB_INVOKE_FAIL_AT", -1)) return kTfLiteError;
  if (g_out.type == kTfLiteInt8) {
    for (size_t i = 0; i < g_out_data.size(); i++) {
      g_out_data[i] = (unsigned char)((i * 37 + g_invocations * 11) % 256);
    }
  }
  stub_hex("output", g_out_data.data(), g_out_data.size());
  return kTfLiteOk;
}

TfLiteTensor* MicroInterpreter::input(size_t index) { return index == 0 ? &g_in : nullptr; }
TfLiteTensor* MicroInterpreter::output(size_t index) { return index == 0 ? &g_out : nullptr; }
size_t MicroInterpreter::inputs_size() const { return 1; }
size_t MicroInterpreter::outputs_size() const { return 1; }
size_t MicroInterpreter::arena_used_bytes() const {
  return (size_t)stub_env("TINYML_STUB_USED", 4321);
}

}  // namespace tflite

// --------------------------------------------------------------------------- camera

#if TINYML_INPUT_CAMERA
OV767X::OV767X() {}
OV767X::~OV767X() {}
int OV767X::begin(int resolution, int format, int fps, int camera_name) {
  fprintf(stderr, "camera_begin %d %d %d %d\n", resolution, format, fps, camera_name);
  return stub_env("TINYML_STUB_CAMERA_FAIL", 0) ? 0 : 1;
}
void OV767X::end() {}
int OV767X::width() const { return 176; }
int OV767X::height() const { return 144; }
int OV767X::bitsPerPixel() const { return 8; }
int OV767X::bytesPerPixel() const { return 1; }
void OV767X::readFrame(void* buffer) {
  static unsigned frame = 0;
  unsigned char* p = (unsigned char*)buffer;
  for (int y = 0; y < 144; y++)
    for (int x = 0; x < 176; x++) p[y * 176 + x] = (unsigned char)((x * 3 + y * 5 + frame * 7) % 256);
  stub_hex("frame", p, 176 * 144);
  frame++;
}
OV767X Camera;
#endif

// ----------------------------------------------------------------------------- main

int main() {
  setup();
  const uint64_t end_us = (uint64_t)stub_env("TINYML_STUB_RUN_MS", 12000) * 1000;
  while (g_now_us < end_us) loop();
  fflush(stdout);
  return 0;
}
