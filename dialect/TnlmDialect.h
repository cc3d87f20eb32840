//===- TnlmDialect.h - the tnlm dialect -------------------------*- C++ -*-===//
#ifndef TNLM_DIALECT_TNLMDIALECT_H
#define TNLM_DIALECT_TNLMDIALECT_H

#include "mlir/IR/Dialect.h"

#include "dialect/TnlmOpsDialect.h.inc"

#endif // TNLM_DIALECT_TNLMDIALECT_H
