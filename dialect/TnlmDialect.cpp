//===- TnlmDialect.cpp - the tnlm dialect ---------------------------------===//
#include "dialect/TnlmDialect.h"
#include "dialect/TnlmOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Interfaces/FunctionInterfaces.h"

using namespace mlir;
using namespace mlir::tnlm;

#include "dialect/TnlmOpsDialect.cpp.inc"

void TnlmDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialect/TnlmOps.cpp.inc"
      >();
}

// `tnlm.param` marks a function argument as a named parameter. The name must be a non-empty
// string, unique among the function's arguments, and the argument must be a ranked float
// tensor (parameters are weights, never token ids).
LogicalResult TnlmDialect::verifyRegionArgAttribute(Operation *op, unsigned regionIndex,
                                                    unsigned argIndex, NamedAttribute attribute) {
  if (attribute.getName() == getStateAttrName() || attribute.getName() == getInputAttrName()) {
    auto name = llvm::dyn_cast<StringAttr>(attribute.getValue());
    if (!name || name.getValue().empty())
      return op->emitError() << "'" << attribute.getName().getValue() << "' of argument #"
                             << argIndex << " must be a non-empty string";
    auto func = llvm::dyn_cast<FunctionOpInterface>(op);
    if (!func)
      return op->emitError() << "'" << attribute.getName().getValue()
                             << "' is only valid on function arguments";
    if (!func.isExternal() && !llvm::isa<RankedTensorType>(func.getArgument(argIndex).getType()))
      return op->emitError() << "'" << attribute.getName().getValue() << "' argument #" << argIndex
                             << " must be a ranked tensor";
    return success();
  }
  if (attribute.getName() != getParamAttrName())
    return op->emitError() << "unknown tnlm argument attribute '" << attribute.getName().getValue()
                           << "'";
  auto name = llvm::dyn_cast<StringAttr>(attribute.getValue());
  if (!name || name.getValue().empty())
    return op->emitError() << "'" << getParamAttrName() << "' of argument #" << argIndex
                           << " must be a non-empty string";
  auto func = llvm::dyn_cast<FunctionOpInterface>(op);
  if (!func)
    return op->emitError() << "'" << getParamAttrName() << "' is only valid on function arguments";
  if (func.isExternal())
    return success();
  Type argType = func.getArgument(argIndex).getType();
  auto tensor = llvm::dyn_cast<RankedTensorType>(argType);
  if (!tensor || !llvm::isa<Float32Type, BFloat16Type, Float16Type>(tensor.getElementType()))
    return op->emitError() << "parameter '" << name.getValue()
                           << "' must be a ranked tensor of f32, bf16 or f16, got " << argType;
  if (!tensor.hasStaticShape())
    return op->emitError() << "parameter '" << name.getValue() << "' must have a static shape, got "
                           << argType;
  for (unsigned i = 0, e = func.getNumArguments(); i < e; ++i) {
    if (i == argIndex)
      continue;
    auto other = func.getArgAttrOfType<StringAttr>(i, getParamAttrName());
    if (other && other == name)
      return op->emitError() << "parameter name '" << name.getValue() << "' is used by arguments #"
                             << std::min(i, argIndex) << " and #" << std::max(i, argIndex);
  }
  return success();
}

// `tnlm.updates` / `tnlm.output` name what a function result is.
LogicalResult TnlmDialect::verifyRegionResultAttribute(Operation *op, unsigned regionIndex,
                                                       unsigned resultIndex,
                                                       NamedAttribute attribute) {
  if (attribute.getName() != getUpdatesAttrName() && attribute.getName() != getOutputAttrName())
    return op->emitError() << "unknown tnlm result attribute '" << attribute.getName().getValue()
                           << "'";
  auto name = llvm::dyn_cast<StringAttr>(attribute.getValue());
  if (!name || name.getValue().empty())
    return op->emitError() << "'" << attribute.getName().getValue() << "' of result #"
                           << resultIndex << " must be a non-empty string";
  if (attribute.getName() == getUpdatesAttrName()) {
    auto func = llvm::dyn_cast<FunctionOpInterface>(op);
    if (!func)
      return op->emitError() << "'" << getUpdatesAttrName() << "' is only valid on functions";
    bool found = false;
    for (unsigned i = 0, e = func.getNumArguments(); i < e; ++i)
      for (StringRef attr : {getParamAttrName(), getStateAttrName()})
        if (auto n = func.getArgAttrOfType<StringAttr>(i, attr))
          found |= n == name;
    if (!found)
      return op->emitError() << "result #" << resultIndex << " updates '" << name.getValue()
                             << "', which is no parameter or state argument of the function";
  }
  return success();
}

LogicalResult TnlmDialect::verifyOperationAttribute(Operation *op, NamedAttribute attribute) {
  if (attribute.getName() == getConfigAttrName()) {
    if (!llvm::isa<ModuleOp>(op))
      return op->emitError() << "'" << getConfigAttrName() << "' is only valid on a module";
    if (!llvm::isa<DictionaryAttr>(attribute.getValue()))
      return op->emitError() << "'" << getConfigAttrName() << "' must be a dictionary";
    return success();
  }
  return op->emitError() << "unknown tnlm attribute '" << attribute.getName().getValue() << "'";
}
