// Host declaration header: the abstract op resolver the interpreter takes.
#ifndef TINYML_HOST_MICRO_OP_RESOLVER_H_
#define TINYML_HOST_MICRO_OP_RESOLVER_H_

namespace tflite {

class MicroOpResolver {
 public:
  virtual ~MicroOpResolver() {}
};

}  // namespace tflite

#endif  // TINYML_HOST_MICRO_OP_RESOLVER_H_
