//===- CpuCall.h - one call of an artifact function on the CPU (private) -*- C++ -*-===//
#ifndef TNLM_RUNTIME_CPUCALL_H
#define TNLM_RUNTIME_CPUCALL_H

#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"

namespace tnlm {

/// Where a call's operands live: the arena, the parameters, the state and its inputs.
struct CpuExecutor::Call {
  const std::string &source;
  int64_t batch, seq, rows;
  float *arena;
  ParamValues &params;
  std::vector<std::vector<float>> &state;
  std::vector<const void *> inputs;

  /// Rows of an operand: the call's rows (batch · seq), its batch, or a fixed row count.
  int64_t rowsOf(const schema::Operand *o) const {
    return o->rows() == -1 ? rows : o->rows() == -2 ? batch : o->rows();
  }

  float *ptr(const schema::Operand *o) const {
    switch (o->kind()) {
    case schema::OperandKind_Arena:
      return arena + o->offset() / sizeof(float) + o->col_offset();
    case schema::OperandKind_Param:
      return params[o->offset()].data() + o->col_offset();
    case schema::OperandKind_State:
      return state[o->offset()].data() + o->col_offset();
    default: // f32 inputs (the hyperparameters)
      if (o->dtype() != schema::DType_F32)
        throw Error(source + ": a float operand refers to token ids");
      return const_cast<float *>(static_cast<const float *>(inputs[o->offset()]));
    }
  }
  int32_t *i32(const schema::Operand *o) const { return reinterpret_cast<int32_t *>(ptr(o)); }
  const int32_t *ids(const schema::Operand *o) const {
    if (o->kind() != schema::OperandKind_Input || o->dtype() != schema::DType_I32)
      throw Error(source + ": token ids must be a function input");
    return static_cast<const int32_t *>(inputs[o->offset()]);
  }
};

} // namespace tnlm

#endif // TNLM_RUNTIME_CPUCALL_H
