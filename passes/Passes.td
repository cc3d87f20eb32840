//===- Passes.td - tnlm passes -----------------------------*- tablegen -*-===//
#ifndef TNLM_PASSES_TD
#define TNLM_PASSES_TD

include "mlir/Pass/PassBase.td"

def DecomposeSglu : Pass<"tnlm-decompose-sglu", "::mlir::ModuleOp"> {
  let summary = "Rewrite tnlm.sglu into linear, linear, mul, linear";
  let description = [{
    `sglu(x, W1, W2, W3) = (x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ` becomes two `tnlm.linear` ops reading the
    same input, a `tnlm.mul`, and the down projection. Backends that have no fused SGLU kernel
    run this form; the fusion passes of the infer pipeline go the other way.
  }];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def PrintParamTable : Pass<"tnlm-print-param-table", "::mlir::ModuleOp"> {
  let summary = "Print the parameter table derived from tnlm.param arguments";
  let description = [{
    For every function with `tnlm.param` arguments, prints one line per parameter (Hugging
    Face name, shape, element type, element count) and the total, to stdout or to the file
    given by `output`. The IR is left unchanged.
  }];
  let options = [
    Option<"output", "output", "std::string", /*default=*/"\"-\"",
           "Where to write the table ('-' for stdout)">
  ];
}

#endif // TNLM_PASSES_TD
