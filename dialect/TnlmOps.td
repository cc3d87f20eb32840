//===- TnlmOps.td - tnlm model-level operations ------------*- tablegen -*-===//
//
// Every op states its shape and dtype rules in its description; the C++ verifier in
// TnlmOps.cpp enforces each of them and test/Dialect/errors.mlir checks each one.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_OPS_TD
#define TNLM_OPS_TD

include "dialect/TnlmDialect.td"
include "dialect/TnlmInterfaces.td"
include "mlir/IR/CommonAttrConstraints.td"
include "mlir/IR/CommonTypeConstraints.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

// Differentiable: the op builds its VJP (tnlm-autodiff).
def Vjp : DeclareOpInterfaceMethods<Tnlm_VjpOpInterface>;

def Tnlm_Float : AnyTypeOf<[F32, BF16, F16]>;
def Tnlm_FloatTensor : RankedTensorOf<[F32, BF16, F16]>;
def Tnlm_TokenTensor : RankedTensorOf<[I32]>;

//===----------------------------------------------------------------------===//
// Embedding, norm, projections
//===----------------------------------------------------------------------===//

def Tnlm_EmbeddingOp : Tnlm_Op<"embedding", [Vjp, Pure]> {
  let summary = "token embedding lookup with optional scale";
  let description = [{
    `result[b, t, :] = scale · table[ids[b, t], :]`.

    Rules: `ids` is a rank-2 i32 tensor `[B, N]`; `table` is a rank-2 float tensor `[V, d]`;
    the result is `[B, N, d]` with the element type of `table`. `scale` is 1 or sqrt(d)
    (`no_scale_embedding = false`) and must be finite and positive. Ids outside `[0, V)` are
    rejected by the runtime. `padding_idx` (optional, in `[0, V)`), as torch's
    `nn.Embedding(padding_idx=)`: the lookup adds nothing to that row's gradient (its VJP,
    `tnlm.embedding_grad`, skips those tokens); the forward is unchanged.

    ```mlir
    %x = tnlm.embedding %ids, %E {scale = 32.0 : f32}
        : (tensor<?x?xi32>, tensor<64000x1024xbf16>) -> tensor<?x?x1024xbf16>
    ```
  }];
  let arguments = (ins Tnlm_TokenTensor:$ids, Tnlm_FloatTensor:$table,
                       DefaultValuedAttr<F32Attr, "1.0f">:$scale,
                       OptionalAttr<I64Attr>:$padding_idx);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$ids `,` $table attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_SrmsNormOp : Tnlm_Op<"srms_norm", [Vjp, Pure, SameOperandsAndResultType]> {
  let summary = "simple RMS norm over the last axis (no parameters)";
  let description = [{
    `y = x · rsqrt(mean(x², last axis) + eps)`, computed in f32 and cast back to the input
    type (docs/model.md, SRMSNorm). Rules: rank ≥ 1; result type equals the input type; `eps` is
    finite and ≥ 0 (default 1e-6, the TransNormerLLM value).
  }];
  let arguments = (ins Tnlm_FloatTensor:$input,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

def Tnlm_LinearOp : Tnlm_Op<"linear", [Vjp, Pure]> {
  let summary = "bias-free projection x · Wᵀ";
  let description = [{
    `result[..., o] = Σ_i input[..., i] · weight[o, i]` (PyTorch `nn.Linear` layout, no bias).
    Rules: `input` has rank ≥ 1 with last dim `in`; `weight` is rank 2 `[out, in]`; the result
    has the input's leading dims and last dim `out`; all element types are equal.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$weight);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_SiluOp : Tnlm_Op<"silu", [Vjp, Pure, SameOperandsAndResultType, Elementwise]> {
  let summary = "SiLU activation x · sigmoid(x)";
  let description = [{
    Elementwise `x / (1 + exp(−x))`. Rules: result type equals the input type.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def Tnlm_MulOp : Tnlm_Op<"mul", [Vjp, Pure, SameOperandsAndResultType, Elementwise, Commutative]> {
  let summary = "elementwise product";
  let description = [{
    `result = lhs ⊙ rhs` (the u gate and the SGLU product). Rules: both operands and the
    result have one type (no broadcasting).
  }];
  let arguments = (ins Tnlm_FloatTensor:$lhs, Tnlm_FloatTensor:$rhs);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Tnlm_AddOp : Tnlm_Op<"add", [Vjp, Pure, SameOperandsAndResultType, Elementwise, Commutative]> {
  let summary = "elementwise sum (residual connections)";
  let description = [{
    `result = lhs + rhs`. Rules: both operands and the result have one type.
  }];
  let arguments = (ins Tnlm_FloatTensor:$lhs, Tnlm_FloatTensor:$rhs);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

//===----------------------------------------------------------------------===//
// Token mixer pieces
//===----------------------------------------------------------------------===//

def Tnlm_SplitOp : Tnlm_Op<"split", [Vjp, Pure]> {
  let summary = "split the last axis into equal contiguous parts";
  let description = [{
    Splits `[..., n·w]` into n results `[..., w]`, in order (the q, k, v, u blocks of
    `qkvu_proj`). Rules: at least two results; all results have one type; the last dim of the
    input is n times the results' last dim; leading dims agree; element types agree.

    ```mlir
    %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x4096xf32> -> tensor<?x?x1024xf32>, ...
    ```
  }];
  let arguments = (ins Tnlm_FloatTensor:$input);
  let results = (outs Variadic<Tnlm_FloatTensor>:$results);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($results)";
  let hasVerifier = 1;
}

def Tnlm_SplitHeadsOp : Tnlm_Op<"split_heads", [Vjp, Pure]> {
  let summary = "view [B, N, H·dh] as [B, N, H, dh]";
  let description = [{
    Head-major, dh-minor split of the feature axis (docs/model.md). Rules: input rank 3
    `[B, N, D]`, result rank 4 `[B, N, H, dh]` with `H · dh = D`, same element type.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Tnlm_MergeHeadsOp : Tnlm_Op<"merge_heads", [Vjp, Pure]> {
  let summary = "view [B, N, H, dh] as [B, N, H·dh]";
  let description = [{
    Inverse of `tnlm.split_heads`. Rules: input rank 4 `[B, N, H, dh]`, result rank 3
    `[B, N, H·dh]`, same element type.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Tnlm_LrpeOp : Tnlm_Op<"lrpe", [Vjp, Pure]> {
  let summary = "linearized relative positional encoding (doubles the feature dim)";
  let description = [{
    For `x: [B, N, H, dh]` at absolute positions `p = t + offset`:
    `result[b, t, h] = concat(x ⊙ cos(θ_h · p), x ⊙ sin(θ_h · p))`, shape `[B, N, H, 2·dh]`.
    Positions and angles are computed in f32 (docs/model.md, LRPE). `offset` is an optional
    `index` operand (0 when absent): recurrent decoding passes the prompt length.

    Rules: `input` rank 4 `[B, N, H, dh]`; `theta` rank 3 `[H, 1, dh]` with the input's H and
    dh; result `[B, N, H, 2·dh]`; all element types equal.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$theta,
                       Optional<Index>:$offset);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $theta (`offset` `(` $offset^ `)`)? attr-dict `:` type($input) `,` type($theta)
    `->` type($result)
  }];
  let hasVerifier = 1;
}

def Tnlm_DecayLinearAttentionOp : Tnlm_Op<"decay_linear_attention", [Vjp, Pure]> {
  let summary = "causal linear attention with per-head exponential decay";
  let description = [{
    Per batch b and head h, with `λ_h = exp(−slopes[h])`:
    `o_t = q_t · Σ_{s≤t} λ_h^{t−s} k_sᵀ v_s`, i.e. the recurrence
    `S_t = λ_h S_{t−1} + k_tᵀ v_t ; o_t = q_t S_t` with state `S ∈ R^{dk×dv}` kept in f32.
    No 1/sqrt(dk) scaling, no softmax. Always causal.

    The decay is stored as the rate `s = −ln λ` rather than λ: for the last layer of a model
    λ = exp(−s_h · 1e-5) is closer to 1 than f32 can represent, while s is exact in f32.

    Rules: `q` and `k` are rank 4 `[B, N, H, dk]` with equal types; `v` is `[B, N, H, dv]`;
    the result is `[B, N, H, dv]`; B, N, H agree across operands; all element types equal;
    `slopes` has exactly H entries, each finite and ≥ 0.

    ```mlir
    %o = tnlm.decay_linear_attention %q, %k, %v {slopes = array<f32: 0.5, 0.25>}
        : (tensor<?x?x2x256xf32>, tensor<?x?x2x256xf32>, tensor<?x?x2x128xf32>)
        -> tensor<?x?x2x128xf32>
    ```
  }];
  let arguments = (ins Tnlm_FloatTensor:$q, Tnlm_FloatTensor:$k, Tnlm_FloatTensor:$v,
                       DenseF32ArrayAttr:$slopes);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$q `,` $k `,` $v attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Fused forms (produced by the fusion passes of passes/, never by the importer)
//===----------------------------------------------------------------------===//

def Tnlm_LightningAttentionOp : Tnlm_Op<"lightning_attention",
                                        [Vjp, Pure, AttrSizedOperandSegments]> {
  let summary = "the whole gated linear attention core as one tiled Lightning Attention";
  let description = [{
    Replaces the token mixer between the `qkvu_proj` output and `out_proj` (docs/model.md,
    "TokenMixer"): with `[q | k | v | u] = qkvu` (four contiguous blocks of width
    `D = heads · head_dim`, each head-major, dh-minor) and per head h,

    ```
    q_h, k_h = φ(q_h), φ(k_h)                    # activation: "silu" or "none"
    q_h, k_h = LRPE(q_h), LRPE(k_h)              # only when θ is given (dk = 2·head_dim)
    O_h      = Σ_{s≤t} λ_h^{t−s} (q_t·k_s) v_s   # λ_h = exp(−slopes[h]), causal
    result   = u ⊙ SRMSNorm(concat_h O_h)        # ONE norm over all D features, eps
    ```

    which is exactly `split` → `silu` → `split_heads` → `lrpe` → `decay_linear_attention`
    → `merge_heads` → `srms_norm` → `mul` with u (tnlm-fuse-lightning-attention).

    **Why one qkvu operand.** The kernel reads q, k, v and u of a token from one row of the
    projection output at column offsets 0, D, 2D, 3D: one base address and one row stride
    (on GPU one TMA descriptor), and the split is part of what is fused. φ and LRPE are a
    prologue applied to the Q and K tiles as they are loaded, so neither the activated nor
    the position-encoded q and k exist as tensors.

    **Tiling.** `block_size` is the Lightning Attention block B (docs/model.md): per (batch,
    head), the intra-block part `((Q Kᵀ) ⊙ M) V` is a left product inside a B×B tile, the
    inter-block part `Λ Q KV` a right product against the running f32 state KV (dk × dv),
    updated as `KV = λ^B KV + (λ^B Λ⁻¹ K)ᵀ V`. The result does not depend on B (up to
    rounding); 0 means "not chosen yet" and is filled in by `tnlm-choose-tiles`; the
    kernel-level lowering requires B > 0.

    **Cross-head norm.** SRMSNorm spans all heads, while the attention is computed one head
    (one (b, h) tile) at a time. The reduction is split in two:
    - on GPU, the attention kernel writes each head's un-normalized O_h tile and, per row t,
      the partial sum of squares `Σ_c O_h[t, c]²` (f32) into a side buffer [B·N, H]; the
      output projection reads its input through a prologue that sums the H partials,
      applies `rsqrt(Σ/D + eps)` and multiplies by u, so the normalized, gated O is never
      written;
    - on CPU, the executor runs the blocked attention for all heads of the batch into the
      result rows, then one epilogue pass per row normalizes the full row (sum of squares
      in f64 over all D features) and multiplies by u while the row is in cache.
    Both equal `u ⊙ SRMSNorm(O)` up to f32 rounding.

    **LRPE.** Present iff `theta` is given (θ of shape [heads, 1, head_dim], the
    checkpoint's `lrpe.theta`); positions are `t + offset`, offset an optional `index`
    (0 when absent; recurrent decoding passes the prompt length), as in `tnlm.lrpe`.

    Rules: `qkvu` is rank 3 `[B, N, 4·D]` and the result `[B, N, D]` with
    `D = heads · head_dim` static and B, N agreeing; one element type throughout; `heads`
    and `head_dim` > 0; `slopes` has `heads` entries, each finite and ≥ 0; `block_size`
    ≥ 0; `activation` is "silu" or "none"; `eps` finite and ≥ 0; `theta`, if given, is
    `[heads, 1, head_dim]`; `offset` needs `theta`.

    ```mlir
    %o = tnlm.lightning_attention %qkvu lrpe(%theta : tensor<2x1x32xf32>)
        {heads = 2 : i64, head_dim = 32 : i64, block_size = 64 : i64,
         slopes = array<f32: 0.0625, 0.00390625>}
        : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Tnlm_FloatTensor:$qkvu, Optional<Tnlm_FloatTensor>:$theta,
                       Optional<Index>:$offset,
                       I64Attr:$heads, I64Attr:$head_dim,
                       DefaultValuedAttr<I64Attr, "0">:$block_size,
                       DenseF32ArrayAttr:$slopes,
                       DefaultValuedStrAttr<StrAttr, "silu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = [{
    $qkvu (`lrpe` `(` $theta^ `:` type($theta) `)`)? (`offset` `(` $offset^ `)`)? attr-dict
    `:` type($qkvu) `->` type($result)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// q/k feature dim seen by the attention: 2·head_dim with LRPE, else head_dim.
    int64_t getKeyDim() { return getTheta() ? 2 * getHeadDim() : getHeadDim(); }
    bool hasSilu() { return getActivation() == "silu"; }
  }];
}

def Tnlm_AddSrmsNormOp : Tnlm_Op<"add_srms_norm", [Vjp, Pure, SameOperandsAndResultType]> {
  let summary = "residual add and SRMSNorm of the sum in one pass";
  let description = [{
    `sum = lhs + rhs; result = sum · rsqrt(mean(sum², last axis) + eps)`: the residual
    connection and the pre-norm of the next block (docs/model.md, "Forward pass") read their
    operands once and write both the residual stream (`sum`, for the next residual add) and
    its normalization (`result`, for the next projection). The sum is rounded to the element
    type before it is normalized, exactly as `tnlm.add` followed by `tnlm.srms_norm`
    (tnlm-fuse-add-norm). `sum` may be unused (the final norm before the LM head).

    Rules: rank ≥ 1; both operands and both results have one type; `eps` finite and ≥ 0.

    ```mlir
    %h, %n = tnlm.add_srms_norm %x, %o {eps = 1.0e-6 : f32} : tensor<?x?x64xf32>
    ```
  }];
  let arguments = (ins Tnlm_FloatTensor:$lhs, Tnlm_FloatTensor:$rhs,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$sum, Tnlm_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($sum)";
  let hasVerifier = 1;
}

def Tnlm_GatedLinearOp : Tnlm_Op<"gated_linear", [Vjp, Pure]> {
  let summary = "the SGLU up-projections with their product: (x·W1ᵀ) ⊙ (x·W2ᵀ)";
  let description = [{
    `result[..., f] = (Σ_i x[..., i] W1[f, i]) · (Σ_i x[..., i] W2[f, i])`: the two
    projections of SGLU that read the same normalized input, with the product applied where
    the second projection's tile is produced (its epilogue), so neither `x·W1ᵀ` nor `x·W2ᵀ`
    is written out (tnlm-fuse-sglu). W1 and W2 stay separate parameters with their Hugging
    Face names: one GEMM over the concatenation [W1; W2] would need a second copy of the
    weights (or a non-checkpoint layout); a backend may still build that copy at load time.

    Rules: `input` has rank ≥ 1 with last dim d; `w1` and `w2` are both `[F, d]`; the result
    has the input's leading dims and last dim F; all element types equal.

    ```mlir
    %p = tnlm.gated_linear %x, %w1, %w2
        : (tensor<?x?x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>) -> tensor<?x?x128xf32>
    ```
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$w1, Tnlm_FloatTensor:$w2);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $w1 `,` $w2 attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Channel mixer, head, loss
//===----------------------------------------------------------------------===//

def Tnlm_SgluOp : Tnlm_Op<"sglu", [Vjp, Pure]> {
  let summary = "simple gated linear unit (x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ, no activation";
  let description = [{
    The TransNormerLLM channel mixer. Rules: `input` rank ≥ 1 with last dim d; `w1` and `w2`
    are `[F, d]`; `w3` is `[d, F]`; the result has the input's type; all element types equal.
    `tnlm-decompose-sglu` rewrites it into its parts (`linear`, `linear`, `mul`, `linear`).
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$w1, Tnlm_FloatTensor:$w2,
                       Tnlm_FloatTensor:$w3);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $w1 `,` $w2 `,` $w3 attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_LmHeadOp : Tnlm_Op<"lm_head", [Vjp, Pure]> {
  let summary = "logits = x · Wlmᵀ";
  let description = [{
    Vocabulary projection (tied to the embedding matrix unless `lm_head.weight` is given).
    Rules: `input` is `[B, N, d]`; `weight` is `[V, d]` with the input's element type; the
    result is `[B, N, V]` of any float type (f32 keeps the loss exact).
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$weight);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_CrossEntropyOp : Tnlm_Op<"cross_entropy", [Vjp, Pure]> {
  let summary = "mean token cross-entropy of logits against labels";
  let description = [{
    `loss = mean over {(b, t) : labels[b, t] ≠ ignore_index} of
    logsumexp(logits[b, t, :]) − logits[b, t, labels[b, t]]`, computed in f32.
    The caller passes labels already shifted (`labels[t] = ids[t+1]`).

    Rules: `logits` is `[B, N, V]`; `labels` is an i32 `[B, N]` tensor whose dims agree; the
    result is a rank-0 f32 tensor.
  }];
  let arguments = (ins Tnlm_FloatTensor:$logits, Tnlm_TokenTensor:$labels,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs 0DTensorOf<[F32]>:$loss);
  let assemblyFormat = "$logits `,` $labels attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

include "dialect/TnlmGradOps.td"
include "dialect/TnlmRecurrentOps.td"

#endif // TNLM_OPS_TD
