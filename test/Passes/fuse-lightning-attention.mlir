// tnlm-fuse-lightning-attention: the positive cases, then every case where the chain must be
// left as it was.
// RUN: tnlm-opt %s --tnlm-fuse-lightning-attention=block-size=32 -split-input-file | FileCheck %s
// RUN: tnlm-opt %s --tnlm-fuse-lightning-attention -split-input-file | FileCheck %s --check-prefix=UNCHOSEN
// RUN: not tnlm-opt %s --tnlm-fuse-lightning-attention=block-size=-1 -split-input-file 2>&1 | FileCheck %s --check-prefix=BAD

// Without a block size the op records 0 (chosen later by tnlm-choose-tiles).
// UNCHOSEN-LABEL: func.func @lrpe_silu
// UNCHOSEN: tnlm.lightning_attention %{{.*}} lrpe(%{{.*}} : tensor<2x1x4xf32>) {head_dim = 4 : i64, heads = 2 : i64
// BAD: error: tnlm-fuse-lightning-attention: block-size must be >= 0, got -1

// The importer's token mixer with LRPE and SiLU: one op, the chain and the split gone.
// CHECK-LABEL: func.func @lrpe_silu
// CHECK-SAME: (%[[QKVU:[^:]*]]: tensor<?x?x32xf32>, %[[TH:[^:]*]]: tensor<2x1x4xf32>
// CHECK-NEXT: %[[Y:.*]] = tnlm.lightning_attention %[[QKVU]] lrpe(%[[TH]] : tensor<2x1x4xf32>) {block_size = 32 : i64, head_dim = 4 : i64, heads = 2 : i64, slopes = array<f32: 0.843999981, 9.99999974E-6>} : tensor<?x?x32xf32> -> tensor<?x?x8xf32>
// CHECK-NEXT: return %[[Y]]
func.func @lrpe_silu(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// LRPE at a runtime position offset on both q and k: the offset is carried.
// CHECK-LABEL: func.func @offset_on_both
// CHECK-SAME: %[[OFF:[^:]*]]: index
// CHECK: tnlm.lightning_attention %{{.*}} lrpe(%{{.*}} : tensor<2x1x4xf32>) offset(%[[OFF]])
// CHECK-NOT: tnlm.lrpe
func.func @offset_on_both(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta offset(%off) : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta offset(%off) : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// Identity activation, no LRPE.
// CHECK-LABEL: func.func @no_lrpe_no_silu
// CHECK-NEXT: tnlm.lightning_attention %{{[^ ]*}} {activation = "none", block_size = 32 : i64
// CHECK-NEXT: return
func.func @no_lrpe_no_silu(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qh = tnlm.split_heads %q : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %k : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %o = tnlm.decay_linear_attention %qh, %kh, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x4xf32>, tensor<?x?x2x4xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// The normalized attention output is also returned: nothing is fused.
// CHECK-LABEL: func.func @pre_gate_used_elsewhere
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @pre_gate_used_elsewhere(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>, tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y, %n : tensor<?x?x8xf32>, tensor<?x?x8xf32>
}

// -----

// The per-head attention output is also returned: nothing is fused.
// CHECK-LABEL: func.func @attention_used_elsewhere
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @attention_used_elsewhere(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>, tensor<?x?x2x4xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y, %o : tensor<?x?x8xf32>, tensor<?x?x2x4xf32>
}

// -----

// SRMSNorm per head (before merge_heads) is another model: nothing is fused.
// CHECK-LABEL: func.func @per_head_norm
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @per_head_norm(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %on = tnlm.srms_norm %o : tensor<?x?x2x4xf32>
  %n = tnlm.merge_heads %on : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// SiLU on q but not on k: nothing is fused.
// CHECK-LABEL: func.func @silu_on_q_only
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @silu_on_q_only(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %k : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// SiLU on v as well: nothing is fused.
// CHECK-LABEL: func.func @silu_on_v
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @silu_on_v(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %va = tnlm.silu %v : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %va : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// q and k encoded with different θ: nothing is fused.
// CHECK-LABEL: func.func @lrpe_different_theta
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @lrpe_different_theta(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta2 : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// q and k at different positions (offset on q only): nothing is fused.
// CHECK-LABEL: func.func @lrpe_different_offset
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @lrpe_different_offset(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta offset(%off) : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// q and k swapped (part 1 used as queries): another function, nothing is fused.
// CHECK-LABEL: func.func @q_k_swapped
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @q_k_swapped(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %k : tensor<?x?x8xf32>
  %ka = tnlm.silu %q : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %u, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// The gate is v instead of the fourth part: nothing is fused.
// CHECK-LABEL: func.func @gate_is_not_u
// CHECK: tnlm.split
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.split_heads
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.lrpe
// CHECK-NEXT: tnlm.decay_linear_attention
// CHECK-NEXT: tnlm.merge_heads
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @gate_is_not_u(%qkvu: tensor<?x?x32xf32>, %theta: tensor<2x1x4xf32>, %theta2: tensor<2x1x4xf32>, %off: index) -> (tensor<?x?x8xf32>) {
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %qa = tnlm.silu %q : tensor<?x?x8xf32>
  %ka = tnlm.silu %k : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %ql = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.844, 1.0e-05>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %y = tnlm.mul %v, %n : tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}
