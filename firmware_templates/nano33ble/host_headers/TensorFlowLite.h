// Host declaration header: the Arduino_TensorFlowLite library's marker header (it only makes
// the Arduino builder link the library; the API comes from the tensorflow/... headers).
#ifndef TINYML_HOST_TENSORFLOWLITE_H_
#define TINYML_HOST_TENSORFLOWLITE_H_
#endif  // TINYML_HOST_TENSORFLOWLITE_H_
