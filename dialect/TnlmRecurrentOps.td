//===- TnlmRecurrentOps.td - recurrent inference ops -------*- tablegen -*-===//
//
// Built by tnlm-recurrent (@prefill, @decode_step) and never by the importer: the fused token
// mixer with an explicit per-layer fp32 state, for generation at constant memory and time
// per token (docs/model.md, "Recurrent form", Algorithm 4).
//
// Slots: a batch of B sequences is B slots, each with its state S[b] ([heads, dk, dv], dk =
// 2·head_dim with LRPE) and its own length or position. A slot with length 0 (prefill) or a
// negative position (decode) is inactive: its state is unchanged and its rows are zero, so one
// slot can be refilled with a new prompt while the others keep decoding.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RECURRENT_OPS_TD
#define TNLM_RECURRENT_OPS_TD

def Tnlm_RecurrentState : RankedTensorOf<[F32]>;
def Tnlm_SlotVector : 1DTensorOf<[I32]>;

def Tnlm_LightningPrefillOp : Tnlm_Op<"lightning_prefill", [Pure]> {
  let summary = "tnlm.lightning_attention over each slot's prompt, leaving its final state";
  let description = [{
    For every slot b with `lengths[b] > 0`: the first `lengths[b]` tokens of `qkvu` (padded
    to N) go through exactly `tnlm.lightning_attention` (φ, LRPE at positions 0, 1, …, the
    blocked Lightning Attention from a zero state, `u ⊙ SRMSNorm(O)`); rows beyond the length
    are zero, and `new_state[b]` is the state after the last token: the state the decode
    loop continues from. Slots with length 0 keep their state.

    Rules: `qkvu` is `[B, N, 4·D]` (D = heads · head_dim), the result `[B, N, D]`; `state` and
    `new_state` are `[B, heads, dk, head_dim]` f32 of one type with dk = 2·head_dim when
    `theta` is given, else head_dim; `lengths` is `[B]` i32; attributes as for
    `tnlm.lightning_attention` (`block_size` > 0 after tnlm-choose-tiles).
  }];
  let arguments = (ins Tnlm_FloatTensor:$qkvu, Tnlm_RecurrentState:$state,
                       Tnlm_SlotVector:$lengths, Optional<Tnlm_FloatTensor>:$theta,
                       I64Attr:$heads, I64Attr:$head_dim,
                       DefaultValuedAttr<I64Attr, "0">:$block_size,
                       DenseF32ArrayAttr:$slopes,
                       DefaultValuedStrAttr<StrAttr, "silu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result, Tnlm_RecurrentState:$new_state);
  let assemblyFormat = [{
    $qkvu `,` $state `,` $lengths (`lrpe` `(` $theta^ `:` type($theta) `)`)? attr-dict `:`
    type($qkvu) `,` type($state) `,` type($lengths) `->` type($result) `,` type($new_state)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    int64_t getKeyDim() { return getTheta() ? 2 * getHeadDim() : getHeadDim(); }
  }];
}

def Tnlm_LightningDecodeOp : Tnlm_Op<"lightning_decode", [Pure]> {
  let summary = "one token per slot through the fused token mixer by the recurrence";
  let description = [{
    For every slot b with `positions[b] ≥ 0`: q, k = LRPE(φ(q)), LRPE(φ(k)) at position
    `positions[b]` (the number of tokens already in the state), then per head the robust
    recurrence `S ← λ S + kᵀ v; o = q S` (S in f32), and `u ⊙ SRMSNorm(o)` over all D
    features. Inactive slots (negative position) keep their state and give zero rows.

    Rules: `qkvu` is `[B, 1, 4·D]`, the result `[B, 1, D]`; `state`, `new_state` and the
    attributes as for `tnlm.lightning_prefill`; `positions` is `[B]` i32.
  }];
  let arguments = (ins Tnlm_FloatTensor:$qkvu, Tnlm_RecurrentState:$state,
                       Tnlm_SlotVector:$positions, Optional<Tnlm_FloatTensor>:$theta,
                       I64Attr:$heads, I64Attr:$head_dim, DenseF32ArrayAttr:$slopes,
                       DefaultValuedStrAttr<StrAttr, "silu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0e-6f">:$eps);
  let results = (outs Tnlm_FloatTensor:$result, Tnlm_RecurrentState:$new_state);
  let assemblyFormat = [{
    $qkvu `,` $state `,` $positions (`lrpe` `(` $theta^ `:` type($theta) `)`)? attr-dict `:`
    type($qkvu) `,` type($state) `,` type($positions) `->` type($result) `,` type($new_state)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    int64_t getKeyDim() { return getTheta() ? 2 * getHeadDim() : getHeadDim(); }
  }];
}

def Tnlm_GatherLastOp : Tnlm_Op<"gather_last", [Pure]> {
  let summary = "each slot's row at its last position: x[b, lengths[b] − 1]";
  let description = [{
    Prefill computes the LM head only where the next token is predicted. Rules: `input` is
    `[B, N, d]`, `lengths` `[B]` i32, the result `[B, 1, d]` of the input's element type; a
    slot with length 0 gives a zero row.
  }];
  let arguments = (ins Tnlm_FloatTensor:$input, Tnlm_SlotVector:$lengths);
  let results = (outs Tnlm_FloatTensor:$result);
  let assemblyFormat = "$input `,` $lengths attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

#endif // TNLM_RECURRENT_OPS_TD
