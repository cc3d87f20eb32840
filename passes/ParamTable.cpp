//===- ParamTable.cpp - the parameter table derived from IR ---------------===//
#include "passes/ParamTable.h"

#include "dialect/TnlmDialect.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/Interfaces/FunctionInterfaces.h"

using namespace mlir;

std::string tnlm::ParamInfo::shapeString() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? "x" : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t tnlm::FunctionParams::totalElements() const {
  int64_t total = 0;
  for (const ParamInfo &p : params)
    total += p.numElements;
  return total;
}

std::string tnlm::dtypeName(Type t) {
  if (t.isF32())
    return "f32";
  if (t.isBF16())
    return "bf16";
  if (t.isF16())
    return "f16";
  std::string s;
  llvm::raw_string_ostream os(s);
  t.print(os);
  return s;
}

std::vector<tnlm::FunctionParams> tnlm::collectParams(ModuleOp module) {
  std::vector<FunctionParams> result;
  module.walk([&](FunctionOpInterface func) {
    FunctionParams fn;
    fn.function = func.getName().str();
    for (unsigned i = 0, e = func.getNumArguments(); i < e; ++i) {
      auto name = func.getArgAttrOfType<StringAttr>(i, TnlmDialect::getParamAttrName());
      if (!name)
        continue;
      auto type = llvm::dyn_cast<RankedTensorType>(func.getArgumentTypes()[i]);
      if (!type || !type.hasStaticShape())
        continue; // the dialect verifier rejects these; skip rather than guess
      ParamInfo p;
      p.name = name.getValue().str();
      p.shape.assign(type.getShape().begin(), type.getShape().end());
      p.dtype = dtypeName(type.getElementType());
      p.numElements = type.getNumElements();
      p.bytesPerElement = (type.getElementTypeBitWidth() + 7) / 8;
      p.argIndex = i;
      fn.params.push_back(std::move(p));
    }
    if (!fn.params.empty())
      result.push_back(std::move(fn));
  });
  return result;
}
