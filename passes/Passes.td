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

def FuseLightningAttention : Pass<"tnlm-fuse-lightning-attention", "::mlir::ModuleOp"> {
  let summary = "Fuse the gated linear attention core into tnlm.lightning_attention";
  let description = [{
    Matches the token mixer core of docs/model.md ("TokenMixer") as the importer builds it:

    ```
    %q, %k, %v, %u = tnlm.split %qkvu                      (4 parts, in this order)
    φ(q), φ(k)       tnlm.silu on both or on neither        (activation "silu" / "none")
    tnlm.split_heads of q, k and v                          (v without activation)
    tnlm.lrpe of q and k with one θ and one offset, or of neither
    tnlm.decay_linear_attention → tnlm.merge_heads → tnlm.srms_norm (over all D)
    tnlm.mul with %u                                        (the output gate)
    ```

    and replaces it with one `tnlm.lightning_attention %qkvu` carrying heads, head_dim,
    the decay slopes, the activation, θ and offset, the norm's eps and `block_size`. Every
    intermediate value must have exactly one use; anything else (the attention output or
    its normalization used elsewhere, a per-head norm before merge_heads, silu on only one
    of q and k or on v, LRPE with different θ or on one side only, q and k swapped, a gate
    other than the fourth part of the same split) leaves the graph as it was. The split
    itself is kept if its parts have other users.
  }];
  let options = [
    Option<"blockSize", "block-size", "int64_t", /*default=*/"0",
           "Lightning Attention block size to record (0: leave it to tnlm-choose-tiles)">
  ];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def FuseSglu : Pass<"tnlm-fuse-sglu", "::mlir::ModuleOp"> {
  let summary = "Fuse the SGLU up-projections and their product into tnlm.gated_linear";
  let description = [{
    The channel mixer `(x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ` reads its normalized input twice. Both forms
    are rewritten:
    - `tnlm.sglu %x, %w1, %w2, %w3` → `tnlm.gated_linear %x, %w1, %w2` + `tnlm.linear` with W3;
    - `tnlm.mul(tnlm.linear(%x, %w1), tnlm.linear(%x, %w2))`, both projections of one input
      and used only by the product (the form `tnlm-decompose-sglu` leaves) →
      `tnlm.gated_linear %x, %w1, %w2`.
    Projections of different inputs, or one whose result is also used elsewhere, are left
    alone. W1 and W2 stay separate parameters (checkpoint names are unchanged).
  }];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def FuseAddNorm : Pass<"tnlm-fuse-add-norm", "::mlir::ModuleOp"> {
  let summary = "Fuse a residual add with the SRMSNorm that reads it into tnlm.add_srms_norm";
  let description = [{
    `%h = tnlm.add %a, %b` followed by `%n = tnlm.srms_norm %h` becomes
    `%h, %n = tnlm.add_srms_norm %a, %b` (both results; other users of `%h` read the first).
    In a TransNormerLLM this is every pre-norm except the first layer's (whose input is the
    embedding) and the final norm before the LM head. A norm of anything but an add is left
    alone, as is an add without a norm.
  }];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def ChooseTiles : Pass<"tnlm-choose-tiles", "::mlir::ModuleOp"> {
  let summary = "Pick the Lightning Attention block size of every fused attention";
  let description = [{
    For every `tnlm.lightning_attention` whose `block_size` is 0 (not chosen), picks B from
    the candidates 16, 32, 64, 128, 256 with the cost model of passes/TileCostModel.h, for
    one (batch, head) over `max-seq` tokens with dk = 2·head_dim (LRPE) or head_dim and
    dv = head_dim, m = min(B, max-seq), T = ceil(max-seq / m):

    ```
    flops(B)   = T · (2·m²·(dk + dv) + 4·m·dk·dv)     intra-block tiles + state products
    seconds(B) = flops / (rate · min(1, m / B_full)) + T · t_block
    subject to   e·m·(2·dk + 2·dv) + 4·(m² + dk·dv) ≤ on-chip bytes
    ```

    (Q, K, V, O tiles of element size e, the f32 score tile and the f32 state). Target
    constants (rate, B_full, t_block, on-chip bytes, e): `cpu` one core at 50 GFLOP/s,
    32, 2 µs (four BLAS calls), 1 MiB L2, f32; `cuda:sm_90a` one SM at 7.5 TFLOP/s bf16,
    64 (wgmma M), 1 µs, 227 KiB shared memory, bf16. The smallest cost wins, ties to the
    smaller block. A block size already set (e.g. by tnlm-fuse-lightning-attention's
    block-size) is kept; the `block-size` option overrides every op.
  }];
  let options = [
    Option<"target", "target", "std::string", /*default=*/"\"cpu\"",
           "Target whose constants the cost model uses: cpu or cuda:sm_90a">,
    Option<"maxSeq", "max-seq", "int64_t", /*default=*/"2048",
           "Longest sequence the compiled model runs (tnlmc --seq)">,
    Option<"blockSize", "block-size", "int64_t", /*default=*/"0",
           "Use this block size for every fused attention (0: the cost model decides)">
  ];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def Autodiff : Pass<"tnlm-autodiff", "::mlir::ModuleOp"> {
  let summary = "Build @train_step, @optimizer_step and @eval_loss from @loss (reverse mode)";
  let description = [{
    Differentiates the loss function (default `@loss`, which may call `@forward`; calls are
    inlined) and adds three functions:

    - `@eval_loss(ids, labels, params…) -> loss`;
    - `@train_step(ids, labels, params…, grads…) -> (loss, grads + ∂loss/∂params)`: the
      forward, the loss and the reverse sweep, in which every op with a cotangent builds its
      vector-Jacobian product (`VjpOpInterface`) and cotangents of a value used several times
      are summed; the gradients of the parameters are added to the f32 gradient state
      (`tnlm.state = "grad/<param>"`), so k calls accumulate k micro-batches;
    - `@optimizer_step(hparams, params…, grads…, m…, v…, step)`: the global norm of the
      averaged gradient, clipping, the learning rate of the step counter, one AdamW update per
      parameter (no weight decay on LRPE θ), zeroed gradients and step + 1.

    Persistent values are arguments marked `tnlm.state` whose new values are results marked
    `tnlm.updates`; backward ops are located at `<forward name>/grad`. The fused
    `tnlm.lightning_attention` gets its fused backward `tnlm.lightning_attention_grad`.
  }];
  let options = [
    Option<"function", "function", "std::string", /*default=*/"\"loss\"",
           "The loss function to differentiate">
  ];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect", "::mlir::func::FuncDialect"];
}

def Recompute : Pass<"tnlm-recompute", "::mlir::ModuleOp"> {
  let summary = "Activation checkpointing: recompute forward values in @train_step's backward";
  let description = [{
    The backward of `@train_step` reads forward values, which therefore stay live from the
    forward to their backward use. This pass clones forward ops right before their first
    backward reader, so that fewer values live across the step (a smaller planned arena for
    more compute):

    - `none`: unchanged.
    - `attention`: every `tnlm.lightning_attention` output read by the backward (the out_proj
      weight gradient) is recomputed from its input qkvu, which is kept.
    - `full`: only the residual stream is kept (the embedding output, the sums of
      `tnlm.add_srms_norm`, and `tnlm.add`s of a residual-stream value), besides parameters
      and arguments; every other forward value the backward reads is recomputed from it,
      with the producers it needs. The norm of an `add_srms_norm` becomes
      `tnlm.srms_norm %sum` (the same rounding). The head after the last residual value
      (final norm, logits) is kept: its backward comes first.

    A recompute region is the backward of one segment between two residual-stream values
    (a token or channel mixer): each forward value is cloned once per region, before its
    first reader there. Results are bit-identical to `none`. The forward is what precedes
    the first op located at `…/grad`; clones are located at `<name>/recompute`. Do not run
    CSE afterwards: it would merge the clones back into the forward.
  }];
  let options = [
    Option<"policy", "policy", "std::string", /*default=*/"\"none\"",
           "What to recompute: none, attention or full">
  ];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect"];
}

def Recurrent : Pass<"tnlm-recurrent", "::mlir::ModuleOp"> {
  let summary = "Build @prefill and @decode_step (recurrent inference) from the fused @forward";
  let description = [{
    Generation at constant memory and time per token (docs/model.md, "Recurrent form",
    Algorithm 4). From the fused, tiled `@forward` (run after tnlm-infer-pipeline):

    - `@prefill(ids [B, N], lengths [B], params…, states…) -> (logits [B, 1, V], states′…)`:
      every `tnlm.lightning_attention` becomes `tnlm.lightning_prefill` (the blocked
      algorithm per slot up to its length, leaving the state after the prompt), and the LM
      head reads only each slot's last position (`tnlm.gather_last`);
    - `@decode_step(ids [B, 1], positions [B], params…, states…) -> (logits [B, 1, V],
      states′…)`: `tnlm.lightning_decode`, the recurrence `S ← λS + kᵀv; o = qS` for one
      token per slot at its position.

    The per-layer fp32 state `[max-batch, H, dk, dv]` is a persistent argument marked
    `tnlm.state = "state/model.layers.<l>.token_mixer"` whose new value is written in place.
    A slot with length 0 (prefill) or a negative position (decode) keeps its state, so one
    slot can be refilled with a new prompt while the others keep decoding.
  }];
  let options = [
    Option<"maxBatch", "max-batch", "int64_t", /*default=*/"1",
           "Slots of the recurrent state (tnlmc --batch)">
  ];
  let dependentDialects = ["::mlir::tnlm::TnlmDialect", "::mlir::func::FuncDialect"];
}

#endif // TNLM_PASSES_TD
