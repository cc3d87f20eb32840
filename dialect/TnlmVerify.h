//===- TnlmVerify.h - shape-rule helpers of the op verifiers ----*- C++ -*-===//
#ifndef TNLM_DIALECT_TNLMVERIFY_H
#define TNLM_DIALECT_TNLMVERIFY_H

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Operation.h"

#include <string>

namespace mlir::tnlm::verify {

inline bool compatible(int64_t a, int64_t b) {
  return a == b || ShapedType::isDynamic(a) || ShapedType::isDynamic(b);
}

inline std::string dimStr(int64_t d) { return ShapedType::isDynamic(d) ? "?" : std::to_string(d); }

inline RankedTensorType tensorOf(Value v) { return llvm::cast<RankedTensorType>(v.getType()); }

inline LogicalResult expectRank(Operation *op, StringRef what, RankedTensorType t, int64_t rank) {
  if (t.getRank() != rank)
    return op->emitOpError() << what << " must have rank " << rank << ", got " << t;
  return success();
}

inline LogicalResult expectSameElementType(Operation *op, StringRef a, RankedTensorType ta,
                                           StringRef b, RankedTensorType tb) {
  if (ta.getElementType() != tb.getElementType())
    return op->emitOpError() << a << " and " << b << " must have the same element type, got "
                             << ta.getElementType() << " and " << tb.getElementType();
  return success();
}

// Checks dim `ia` of `ta` against dim `ib` of `tb`, where either may be dynamic.
inline LogicalResult expectDim(Operation *op, StringRef what, RankedTensorType ta, int64_t ia,
                               RankedTensorType tb, int64_t ib) {
  if (!compatible(ta.getDimSize(ia), tb.getDimSize(ib)))
    return op->emitOpError() << what << " mismatch: " << dimStr(ta.getDimSize(ia)) << " vs "
                             << dimStr(tb.getDimSize(ib));
  return success();
}

inline LogicalResult expectDimEq(Operation *op, StringRef what, int64_t a, int64_t b) {
  if (!compatible(a, b))
    return op->emitOpError() << what << " mismatch: " << dimStr(a) << " vs " << dimStr(b);
  return success();
}

} // namespace mlir::tnlm::verify

#endif // TNLM_DIALECT_TNLMVERIFY_H
