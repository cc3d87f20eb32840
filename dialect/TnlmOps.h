//===- TnlmOps.h - tnlm model-level operations ------------------*- C++ -*-===//
#ifndef TNLM_DIALECT_TNLMOPS_H
#define TNLM_DIALECT_TNLMOPS_H

#include "dialect/TnlmDialect.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "dialect/TnlmInterfaces.h.inc"

#define GET_OP_CLASSES
#include "dialect/TnlmOps.h.inc"

#endif // TNLM_DIALECT_TNLMOPS_H
