// Host declaration header: tflite::Model and tflite::GetModel from the flatbuffers-generated
// schema (tensorflow/lite/schema/schema_generated.h), trimmed to what the sketch calls.
#ifndef TINYML_HOST_SCHEMA_GENERATED_H_
#define TINYML_HOST_SCHEMA_GENERATED_H_

#include <stdint.h>

namespace tflite {

struct Model {  // a flatbuffers::Table in the real header
  uint32_t version() const;
};

const Model* GetModel(const void* buf);

}  // namespace tflite

#endif  // TINYML_HOST_SCHEMA_GENERATED_H_
