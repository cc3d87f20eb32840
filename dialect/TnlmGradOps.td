//===- TnlmGradOps.td - backward and optimizer ops ---------*- tablegen -*-===//
//
// Built by tnlm-autodiff (the VJPs of VjpOpInterface) and never by the importer. Each op
// states its formula (docs/model.md, "Training") and its shape rules; weight gradients are
// f32 whatever the parameter dtype (gradients accumulate in f32).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_GRAD_OPS_TD
#define TNLM_GRAD_OPS_TD

//===----------------------------------------------------------------------===//
// Backward of the forward ops
//===----------------------------------------------------------------------===//

def Tnlm_LinearInputGradOp : Tnlm_Op<"linear_input_grad", [Pure]> {
  let summary = "input gradient of a projection: dx = dy · W";
  let description = [{
    VJP of `tnlm.linear` / `tnlm.lm_head` with respect to the input. Rules: `grad` has rank
    ≥ 1 with last dim `out`; `weight` is `[out, in]`; the result has the leading dims of
    `grad` and last dim `in`.
  }];
  let arguments = (ins Tnlm_FloatTensor:$grad, Tnlm_FloatTensor:$weight);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$grad `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_LinearWeightGradOp : Tnlm_Op<"linear_weight_grad", [Pure]> {
  let summary = "weight gradient of a projection: dW = dyᵀ · x, summed over all tokens";
  let description = [{
    VJP of `tnlm.linear` / `tnlm.lm_head` with respect to the weight. Rules: `grad` `[..., out]`
    and `input` `[..., in]` have the same rank and leading dims; the result is `[out, in]` f32.
  }];
  let arguments = (ins Tnlm_FloatTensor:$grad, Tnlm_FloatTensor:$input);
  let results = (outs F32Tensor:$result);
  let assemblyFormat = "$grad `,` $input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_SrmsNormGradOp : Tnlm_Op<"srms_norm_grad", [Pure]> {
  let summary = "SRMSNorm backward: dx = r·(dy − x̂·mean(x̂·dy))";
  let description = [{
    With `r = rsqrt(mean(x²) + eps)` and `x̂ = x·r` over the last axis (means in f32 or
    better). Rules: `input`, `grad` and the result have one shape; `eps` as in
    `tnlm.srms_norm`.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$grad,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $grad attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_AddSrmsNormGradOp : Tnlm_Op<"add_srms_norm_grad", [Pure]> {
  let summary = "backward of tnlm.add_srms_norm: the gradient of both summands";
  let description = [{
    For `sum = a + b; y = SRMSNorm(sum)`: `da = db = sum_grad + SRMSNorm backward of grad at
    sum`. `sum_grad` (the cotangent of the `sum` result) is optional: absent when `sum` has no
    other use (the final norm). Rules: every operand and the result have one shape.
  }];
  let arguments = (ins Tnlm_FloatTensor:$sum, Tnlm_FloatTensor:$grad,
                       Optional<Tnlm_FloatTensor>:$sum_grad,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = [{
    $sum `,` $grad (`sum_grad` `(` $sum_grad^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_SiluGradOp : Tnlm_Op<"silu_grad", [Pure]> {
  let summary = "SiLU backward: dx = dy·σ(x)·(1 + x·(1 − σ(x)))";
  let description = [{ Rules: `input`, `grad` and the result have one shape. }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$grad);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $grad attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_LrpeGradOp : Tnlm_Op<"lrpe_grad", [Pure]> {
  let summary = "LRPE backward: the input gradient and the θ gradient";
  let description = [{
    For `y = [x⊙cos(θp), x⊙sin(θp)]`, p = t + offset:
    `dx = dy_c⊙cos(θp) + dy_s⊙sin(θp)` and `dθ = Σ_{b,t} p·x⊙(dy_s⊙cos(θp) − dy_c⊙sin(θp))`.
    Rules: `input` `[B, N, H, dh]`, `theta` `[H, 1, dh]`, `grad` `[B, N, H, 2·dh]`; results:
    `input_grad` of the input's shape and `theta_grad` `[H, 1, dh]` f32.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$theta, Tnlm_FloatTensor:$grad,
                       Optional<Index>:$offset);
  let results = (outs Tnlm_FloatTensor:$input_grad, F32Tensor:$theta_grad);
  let assemblyFormat = [{
    $input `,` $theta `,` $grad (`offset` `(` $offset^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_DecayLinearAttentionGradOp : Tnlm_Op<"decay_linear_attention_grad", [Pure]> {
  let summary = "backward of tnlm.decay_linear_attention: dq, dk, dv";
  let description = [{
    The reverse recurrence `dS_t = λ dS_{t+1} + q_tᵀ do_t`, `dk_t = v_t dS_tᵀ`,
    `dv_t = k_t dS_t`, `dq_t = do_t S_tᵀ` (docs/model.md). Rules: q, k, v as in the forward;
    `grad` has the shape of v; the results have the shapes of q, k and v; `slopes` as in the
    forward.
  }];
  let arguments = (ins Tnlm_FloatTensor:$q, Tnlm_FloatTensor:$k, Tnlm_FloatTensor:$v,
                       Tnlm_FloatTensor:$grad, DenseF32ArrayAttr:$slopes);
  let results = (outs Tnlm_FloatTensor:$q_grad, Tnlm_FloatTensor:$k_grad,
                      Tnlm_FloatTensor:$v_grad);
  let assemblyFormat = "$q `,` $k `,` $v `,` $grad attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_LightningAttentionGradOp : Tnlm_Op<"lightning_attention_grad",
                                            [Pure, AttrSizedOperandSegments]> {
  let summary = "fused backward of tnlm.lightning_attention (Algorithm 2 with φ, LRPE, norm, gate)";
  let description = [{
    The whole backward of the fused token-mixer core in one op, not the backward of the
    unfused chain: from `qkvu` (the only saved value: φ(q), φ(k), LRPE and the attention
    output O are recomputed) and the cotangent `grad` of `u ⊙ SRMSNorm(O)`:
    ```
    du  = grad ⊙ SRMSNorm(O)
    dO  = SRMSNorm backward (over all D features) of grad ⊙ u at O
    dq', dk', dv = Lightning Attention backward (Algorithm 2, block `block_size`)
    dq  = φ'(q) ⊙ LRPE backward of dq'     (dk likewise); dθ from both
    ```
    The result `qkvu_grad` is `[B, N, 4·D]` (dq, dk, dv, du at columns 0, D, 2D, 3D);
    `theta_grad` `[heads, 1, head_dim]` f32 exists iff `theta` is given. Attributes and
    rules as for `tnlm.lightning_attention`; `grad` has the forward result's shape.
  }];
  let arguments = (ins Tnlm_FloatTensor:$qkvu, Optional<Tnlm_FloatTensor>:$theta,
                       Tnlm_FloatTensor:$grad, Optional<Index>:$offset,
                       I64Attr:$heads, I64Attr:$head_dim,
                       DefaultValuedAttr<I64Attr, "0">:$block_size,
                       DenseF32ArrayAttr:$slopes,
                       DefaultValuedStrAttr<StrAttr, "silu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$qkvu_grad, Optional<F32Tensor>:$theta_grad);
  let assemblyFormat = [{
    $qkvu (`lrpe` `(` $theta^ `:` type($theta) `)`)? `,` $grad (`offset` `(` $offset^ `)`)?
    attr-dict `:` type($qkvu) `,` type($grad) `->` type(results)
  }];
  let hasVerifier = 1;
}

def Tnlm_GatedLinearGradOp : Tnlm_Op<"gated_linear_grad", [Pure]> {
  let summary = "backward of tnlm.gated_linear: dx, dW1, dW2";
  let description = [{
    For `y = a ⊙ b`, `a = x·W1ᵀ`, `b = x·W2ᵀ` (recomputed, not saved): `da = dy⊙b`,
    `db = dy⊙a`, `dW1 = daᵀx`, `dW2 = dbᵀx`, `dx = da·W1 + db·W2`. Rules: operands as in the
    forward, `grad` of the forward result's shape; results: the input's shape, then W1's and
    W2's shapes in f32.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_FloatTensor:$w1, Tnlm_FloatTensor:$w2,
                       Tnlm_FloatTensor:$grad);
  let results = (outs Tnlm_FloatTensor:$input_grad, F32Tensor:$w1_grad, F32Tensor:$w2_grad);
  let assemblyFormat = [{
    $input `,` $w1 `,` $w2 `,` $grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_EmbeddingGradOp : Tnlm_Op<"embedding_grad", [Pure]> {
  let summary = "embedding backward: dE[ids[t]] += scale · dx[t] (scatter-add)";
  let description = [{
    Repeated ids accumulate (in token order, deterministically). Rules: `ids` `[B, N]` i32,
    `grad` `[B, N, d]`, result `[V, d]` f32; `scale` and `padding_idx` as in `tnlm.embedding`
    (tokens of that id add nothing).
  }];
  let arguments = (ins Tnlm_TokenTensor:$ids, Tnlm_FloatTensor:$grad,
                       DefaultValuedAttr<F32Attr, "1.0f">:$scale,
                       OptionalAttr<I64Attr>:$padding_idx);
  let results = (outs F32Tensor:$result);
  let assemblyFormat = "$ids `,` $grad attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_CrossEntropyGradOp : Tnlm_Op<"cross_entropy_grad", [Pure]> {
  let summary = "cross-entropy backward: dz = loss_grad · (softmax(z) − onehot(y)) / count";
  let description = [{
    On positions whose label is not `ignore_index` (count of them: `count`); 0 elsewhere.
    Rules: `logits` `[B, N, V]`, `labels` `[B, N]` i32, `loss_grad` a rank-0 f32 tensor; the
    result has the type of `logits`.
  }];
  let arguments = (ins Tnlm_FloatTensor:$logits, Tnlm_TokenTensor:$labels,
                       0DTensorOf<[F32]>:$loss_grad,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = [{
    $logits `,` $labels `,` $loss_grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_ConcatOp : Tnlm_Op<"concat", [Pure]> {
  let summary = "concatenate along the last axis (the VJP of tnlm.split)";
  let description = [{
    Rules: at least two inputs of one type `[..., w]`; the result is `[..., n·w]` with the same
    leading dims and element type.
  }];
  let arguments = (ins Variadic<Tnlm_FloatTensor>:$inputs);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$inputs attr-dict `:` type($inputs) `->` type($result)";
  let hasVerifier = 1;
}

def Tnlm_FillOp : Tnlm_Op<"fill", [Pure]> {
  let summary = "a tensor filled with one value (zero cotangents, the loss seed, zeroed state)";
  let description = [{
    The result's dynamic dims are taken from `like` (required when the result has dynamic
    dims; it must have the result's rank). Rules: `value` finite.
  }];
  let arguments = (ins Optional<AnyRankedTensor>:$like, F32Attr:$value);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "(`like` `(` $like^ `:` type($like) `)`)? attr-dict `:` type($result)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Optimizer (the body of @optimizer_step)
//===----------------------------------------------------------------------===//

def Tnlm_HyperParams : 1DTensorOf<[F32]>;
def Tnlm_StepCounter : 0DTensorOf<[I32]>;

def Tnlm_GlobalNormOp : Tnlm_Op<"global_norm", [Pure]> {
  let summary = "L2 norm of all gradients together, of the mean over accumulated micro-batches";
  let description = [{
    `norm = sqrt(Σ over all grads of g²) / k`, k = `hparams[accum_steps]` (the gradients hold
    the sum over k micro-batches), with the sum in f64: `torch.nn.utils.clip_grad_norm_`'s
    total norm of the averaged gradient. The hyperparameter vector's layout is
    `tnlm::schema::HyperParam` (runtime/schema/tnlm.fbs). Rules: at least one f32 gradient;
    the result is a rank-0 f32 tensor.
  }];
  let arguments = (ins Tnlm_HyperParams:$hparams, Variadic<F32Tensor>:$grads);
  let results = (outs 0DTensorOf<[F32]>:$result);
  let assemblyFormat = "$hparams `,` $grads attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Tnlm_LrScheduleOp : Tnlm_Op<"lr_schedule", [Pure]> {
  let summary = "learning rate of the optimizer step with index `step` (0-based)";
  let description = [{
    With `s = step`, `W = warmup`, `S = total_steps`, `lr`, `min_lr` from `hparams`:
    ```
    s < W:                lr · (s + 1) / W                         (linear warmup)
    schedule = constant:  lr
    schedule = cosine:    min_lr + (lr − min_lr) · (1 + cos(π · p)) / 2,  p = min(1, (s − W) / max(1, S − W))
    ```
    Rules: `step` is a rank-0 i32 tensor; the result is a rank-0 f32 tensor.
  }];
  let arguments = (ins Tnlm_StepCounter:$step, Tnlm_HyperParams:$hparams);
  let results = (outs 0DTensorOf<[F32]>:$result);
  let assemblyFormat = "$step `,` $hparams attr-dict `:` functional-type(operands, results)";
}

def Tnlm_ClipScaleOp : Tnlm_Op<"clip_scale", [Pure]> {
  let summary = "factor applied to the summed gradients: clipping and the 1/k of accumulation";
  let description = [{
    `scale = c / k` with `c = min(1, max_norm / (norm + 1e-6))` when `max_norm =
    hparams[clip_grad] > 0`, else `c = 1` (clip_grad_norm_'s rule; `norm` from
    `tnlm.global_norm`), k = `hparams[accum_steps]`.
  }];
  let arguments = (ins 0DTensorOf<[F32]>:$norm, Tnlm_HyperParams:$hparams);
  let results = (outs 0DTensorOf<[F32]>:$result);
  let assemblyFormat = "$norm `,` $hparams attr-dict `:` functional-type(operands, results)";
}

def Tnlm_AdamWOp : Tnlm_Op<"adamw", [Pure, AllTypesMatch<["param", "new_param"]>,
                                     AllTypesMatch<["grad", "exp_avg", "exp_avg_sq",
                                                    "new_exp_avg", "new_exp_avg_sq"]>]> {
  let summary = "one AdamW update of a parameter and its moments (torch.optim.AdamW)";
  let description = [{
    With `g = grad · scale`, t = step + 1, β1, β2, eps, weight decay wd from `hparams`:
    ```
    p ← p·(1 − lr·wd)      (only if weight_decay; LRPE θ has none)
    m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
    p ← p − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)
    ```
    m and v are `exp_avg` and `exp_avg_sq` (torch's names). Results: the new parameter, m and
    v (the runtime updates them in place). Rules: `param`, `grad`, m, v have one shape; grad,
    m, v are f32.
  }];
  let arguments = (ins Tnlm_FloatTensor:$param, F32Tensor:$grad, F32Tensor:$exp_avg, F32Tensor:$exp_avg_sq,
                       Tnlm_StepCounter:$step, 0DTensorOf<[F32]>:$lr,
                       0DTensorOf<[F32]>:$scale, Tnlm_HyperParams:$hparams,
                       DefaultValuedAttr<BoolAttr, "true">:$weight_decay);
  let results = (outs Tnlm_FloatTensor:$new_param, F32Tensor:$new_exp_avg,
                      F32Tensor:$new_exp_avg_sq);
  let assemblyFormat = [{
    $param `,` $grad `,` $exp_avg `,` $exp_avg_sq `,` $step `,` $lr `,` $scale `,` $hparams
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Tnlm_IncrementOp : Tnlm_Op<"increment", [Pure, SameOperandsAndResultType]> {
  let summary = "step counter + 1";
  let arguments = (ins Tnlm_StepCounter:$step);
  let results = (outs Tnlm_StepCounter:$result);
  let assemblyFormat = "$step attr-dict `:` type($step)";
}

#endif // TNLM_GRAD_OPS_TD
