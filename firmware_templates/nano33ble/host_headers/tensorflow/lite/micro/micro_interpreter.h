// Host declaration header: tflite::MicroInterpreter as in recent TFLM (the constructor has no
// ErrorReporter), trimmed to the members the sketch uses.
#ifndef TINYML_HOST_MICRO_INTERPRETER_H_
#define TINYML_HOST_MICRO_INTERPRETER_H_

#include <stddef.h>
#include <stdint.h>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#define TFLITE_SCHEMA_VERSION (3)

namespace tflite {

class MicroResourceVariables;
class MicroProfilerInterface;

class MicroInterpreter {
 public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver,
                   uint8_t* tensor_arena, size_t tensor_arena_size,
                   MicroResourceVariables* resource_variables = nullptr,
                   MicroProfilerInterface* profiler = nullptr);
  ~MicroInterpreter();

  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index);
  TfLiteTensor* output(size_t index);
  size_t inputs_size() const;
  size_t outputs_size() const;
  // Valid after AllocateTensors(); add 16 bytes for alignment when sizing an arena.
  size_t arena_used_bytes() const;
};

}  // namespace tflite

#endif  // TINYML_HOST_MICRO_INTERPRETER_H_
