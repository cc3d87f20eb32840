//===- TnlmDialect.td - the tnlm dialect -------------------*- tablegen -*-===//
#ifndef TNLM_DIALECT_TD
#define TNLM_DIALECT_TD

include "mlir/IR/OpBase.td"

def Tnlm_Dialect : Dialect {
  let name = "tnlm";
  let cppNamespace = "::mlir::tnlm";
  let summary = "TransNormerLLM model-level operations";
  let description = [{
    The `tnlm` dialect describes TransNormerLLM-family models (Lightning Attention with
    exponential decay, LRPE, gated linear attention, SGLU, SRMSNorm) at the level of the
    paper's equations (docs/model.md). Tensors are builtin ranked tensors of f32,
    bf16 or f16; batch and sequence dimensions may be dynamic.

    Parameters are function arguments that carry the discardable argument attribute
    `tnlm.param = "<Hugging Face name>"`, e.g.
    `%w: tensor<4096x1024xbf16> {tnlm.param = "model.layers.3.token_mixer.qkvu_proj.weight"}`,
    so the parameter table of a model is derived from its IR. A module may carry
    `tnlm.config`, a dictionary with the model's Hugging Face config fields.

    Train functions (tnlm-autodiff) also take persistent state: arguments marked
    `tnlm.state = "<name>"` (gradients `grad/<param>`, AdamW moments `adam_m/<param>` and
    `adam_v/<param>`, the step counter `step`) live in the artifact's state table and keep
    their values between calls; `tnlm.input = "<name>"` names a per-call input (`ids`,
    `labels`, `hparams`). A result marked `tnlm.updates = "<name>"` is the new value of that
    parameter or state (written in place); `tnlm.output = "<name>"` names a returned value
    (`loss`, `grad_norm`, `lr`).
  }];
  let hasRegionArgAttrVerify = 1;
  let hasRegionResultAttrVerify = 1;
  let hasOperationAttrVerify = 1;
  let extraClassDeclaration = [{
    /// Name of the argument attribute that marks a parameter.
    static constexpr ::llvm::StringLiteral getParamAttrName() { return "tnlm.param"; }
    /// Name of the module attribute holding the model configuration.
    static constexpr ::llvm::StringLiteral getConfigAttrName() { return "tnlm.config"; }
    /// Argument attribute: persistent state (gradients, moments, step counter).
    static constexpr ::llvm::StringLiteral getStateAttrName() { return "tnlm.state"; }
    /// Argument attribute: a named per-call input.
    static constexpr ::llvm::StringLiteral getInputAttrName() { return "tnlm.input"; }
    /// Result attribute: the new value of the named parameter or state.
    static constexpr ::llvm::StringLiteral getUpdatesAttrName() { return "tnlm.updates"; }
    /// Result attribute: the name of a returned value.
    static constexpr ::llvm::StringLiteral getOutputAttrName() { return "tnlm.output"; }
  }];
}

class Tnlm_Op<string mnemonic, list<Trait> traits = []>
    : Op<Tnlm_Dialect, mnemonic, traits>;

#endif // TNLM_DIALECT_TD
