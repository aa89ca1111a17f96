// Host declaration header: tflite::MicroMutableOpResolver<N> of the Arduino TFLM library.
// Every Add* method returns TfLiteStatus and takes no argument the sketch passes (the real
// AddFullyConnected/AddSoftmax have an optional registration argument). The list is the one
// hal/model/ops.py maps ops to; tests/firmware checks the two stay in step.
#ifndef TINYML_HOST_MICRO_MUTABLE_OP_RESOLVER_H_
#define TINYML_HOST_MICRO_MUTABLE_OP_RESOLVER_H_

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"

// X(method) for every registration method.
#define TINYML_HOST_RESOLVER_METHODS(X) \
  X(AddAbs) \
  X(AddAdd) \
  X(AddAddN) \
  X(AddArgMax) \
  X(AddArgMin) \
  X(AddAssignVariable) \
  X(AddAveragePool2D) \
  X(AddBatchToSpaceNd) \
  X(AddBroadcastArgs) \
  X(AddBroadcastTo) \
  X(AddCallOnce) \
  X(AddCast) \
  X(AddCeil) \
  X(AddCircularBuffer) \
  X(AddConcatenation) \
  X(AddConv2D) \
  X(AddCos) \
  X(AddCumSum) \
  X(AddDepthToSpace) \
  X(AddDepthwiseConv2D) \
  X(AddDequantize) \
  X(AddDetectionPostprocess) \
  X(AddDiv) \
  X(AddElu) \
  X(AddEqual) \
  X(AddExp) \
  X(AddExpandDims) \
  X(AddFill) \
  X(AddFloor) \
  X(AddFloorDiv) \
  X(AddFloorMod) \
  X(AddFullyConnected) \
  X(AddGather) \
  X(AddGatherNd) \
  X(AddGreater) \
  X(AddGreaterEqual) \
  X(AddHardSwish) \
  X(AddIf) \
  X(AddL2Normalization) \
  X(AddL2Pool2D) \
  X(AddLeakyRelu) \
  X(AddLess) \
  X(AddLessEqual) \
  X(AddLog) \
  X(AddLogSoftmax) \
  X(AddLogicalAnd) \
  X(AddLogicalNot) \
  X(AddLogicalOr) \
  X(AddLogistic) \
  X(AddMaxPool2D) \
  X(AddMaximum) \
  X(AddMean) \
  X(AddMinimum) \
  X(AddMirrorPad) \
  X(AddMul) \
  X(AddNeg) \
  X(AddNotEqual) \
  X(AddPack) \
  X(AddPad) \
  X(AddPadV2) \
  X(AddPrelu) \
  X(AddQuantize) \
  X(AddReadVariable) \
  X(AddReduceMax) \
  X(AddRelu) \
  X(AddRelu6) \
  X(AddReshape) \
  X(AddResizeBilinear) \
  X(AddResizeNearestNeighbor) \
  X(AddRound) \
  X(AddRsqrt) \
  X(AddSelectV2) \
  X(AddShape) \
  X(AddSin) \
  X(AddSlice) \
  X(AddSoftmax) \
  X(AddSpaceToBatchNd) \
  X(AddSpaceToDepth) \
  X(AddSplit) \
  X(AddSplitV) \
  X(AddSqrt) \
  X(AddSquare) \
  X(AddSquaredDifference) \
  X(AddSqueeze) \
  X(AddStridedSlice) \
  X(AddSub) \
  X(AddSum) \
  X(AddSvdf) \
  X(AddTanh) \
  X(AddTranspose) \
  X(AddTransposeConv) \
  X(AddUnidirectionalSequenceLSTM) \
  X(AddUnpack) \
  X(AddVarHandle) \
  X(AddWhile) \
  X(AddZerosLike)

namespace tflite {

template <unsigned int tOpCount>
class MicroMutableOpResolver : public MicroOpResolver {
 public:
#define TINYML_HOST_DECLARE_ADD(name) TfLiteStatus name();
  TINYML_HOST_RESOLVER_METHODS(TINYML_HOST_DECLARE_ADD)
#undef TINYML_HOST_DECLARE_ADD
  unsigned int GetRegistrationLength();
};

}  // namespace tflite

#endif  // TINYML_HOST_MICRO_MUTABLE_OP_RESOLVER_H_
