//===- TnlmInterfaces.td - tnlm op interfaces --------------*- tablegen -*-===//
#ifndef TNLM_INTERFACES_TD
#define TNLM_INTERFACES_TD

include "mlir/IR/OpBase.td"

def Tnlm_VjpOpInterface : OpInterface<"VjpOpInterface"> {
  let cppNamespace = "::mlir::tnlm";
  let description = [{
    A differentiable tnlm op: builds its vector-Jacobian product (reverse-mode derivative)
    out of tnlm ops. `tnlm-autodiff` walks a function backwards and calls `buildVjp` on every
    op one of whose results has a cotangent; an op joins automatic differentiation by
    implementing this interface (docs/model.md, "Training", lists each formula).
  }];
  let methods = [
    InterfaceMethod<[{
        Builds, at the builder's insertion point, the cotangents of the operands given the
        cotangents of the results (`resultGrads[i]` is null where result i has none, i.e. a
        zero cotangent; at least one is non-null). Returns one value per operand: null for
        operands that are not differentiable (token ids, labels, offsets) or get a zero
        cotangent. A cotangent has its operand's shape; weight gradients are f32.
      }],
      "::llvm::SmallVector<::mlir::Value>", "buildVjp",
      (ins "::mlir::OpBuilder &":$builder, "::llvm::ArrayRef<::mlir::Value>":$resultGrads)>
  ];
}

#endif // TNLM_INTERFACES_TD
