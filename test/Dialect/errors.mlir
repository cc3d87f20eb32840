// Each verifier rule of the tnlm dialect, one function per rule.
// RUN: tnlm-opt %s -split-input-file -verify-diagnostics

func.func @decay_heads_vs_slopes(%q: tensor<1x8x2x16xf32>, %v: tensor<1x8x2x16xf32>) {
  // expected-error @+1 {{has 2 heads but 3 decay slopes}}
  %o = tnlm.decay_linear_attention %q, %q, %v {slopes = array<f32: 0.5, 0.25, 0.1>} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x2x16xf32>
  return
}

// -----

func.func @decay_negative_slope(%q: tensor<1x8x2x16xf32>) {
  // expected-error @+1 {{decay slope of head 1 must be finite and >= 0, got -2.5}}
  %o = tnlm.decay_linear_attention %q, %q, %q {slopes = array<f32: 0.5, -2.5>} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x2x16xf32>
  return
}

// -----

func.func @decay_qk_feature_mismatch(%q: tensor<1x8x2x32xf32>, %k: tensor<1x8x2x16xf32>, %v: tensor<1x8x2x16xf32>) {
  // expected-error @+1 {{feature dim dk of q and k mismatch: 32 vs 16}}
  %o = tnlm.decay_linear_attention %q, %k, %v {slopes = array<f32: 0.5, 0.25>} : (tensor<1x8x2x32xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x2x16xf32>
  return
}

// -----

func.func @decay_dv_mismatch(%q: tensor<1x8x2x16xf32>, %v: tensor<1x8x2x16xf32>) {
  // expected-error @+1 {{feature dim dv of v and result mismatch: 16 vs 8}}
  %o = tnlm.decay_linear_attention %q, %q, %v {slopes = array<f32: 0.5, 0.25>} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x2x8xf32>
  return
}

// -----

func.func @decay_sequence_mismatch(%q: tensor<1x8x2x16xf32>, %v: tensor<1x9x2x16xf32>) {
  // expected-error @+1 {{sequence of q and v mismatch: 8 vs 9}}
  %o = tnlm.decay_linear_attention %q, %q, %v {slopes = array<f32: 0.5, 0.25>} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x9x2x16xf32>) -> tensor<1x9x2x16xf32>
  return
}

// -----

func.func @decay_bad_rank(%q: tensor<8x2x16xf32>) {
  // expected-error @+1 {{q must have rank 4, got 'tensor<8x2x16xf32>'}}
  %o = tnlm.decay_linear_attention %q, %q, %q {slopes = array<f32: 0.5, 0.25>} : (tensor<8x2x16xf32>, tensor<8x2x16xf32>, tensor<8x2x16xf32>) -> tensor<8x2x16xf32>
  return
}

// -----

func.func @decay_mixed_dtypes(%q: tensor<1x8x2x16xf32>, %v: tensor<1x8x2x16xbf16>) {
  // expected-error @+1 {{q and v must have the same element type, got 'f32' and 'bf16'}}
  %o = tnlm.decay_linear_attention %q, %q, %v {slopes = array<f32: 0.5, 0.25>} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xbf16>) -> tensor<1x8x2x16xbf16>
  return
}

// -----

func.func @non_float_operand(%x: tensor<4x8xi32>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of 32-bit float or bfloat16 type or 16-bit float values}}
  %y = tnlm.silu %x : tensor<4x8xi32>
  return
}

// -----

func.func @f64_is_not_a_model_dtype(%x: tensor<4x8xf64>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of 32-bit float or bfloat16 type or 16-bit float values}}
  %y = tnlm.srms_norm %x : tensor<4x8xf64>
  return
}

// -----

func.func @srms_norm_negative_eps(%x: tensor<4x8xf32>) {
  // expected-error @+1 {{eps must be finite and >= 0}}
  %y = tnlm.srms_norm %x {eps = -1.0 : f32} : tensor<4x8xf32>
  return
}

// -----

func.func @linear_in_features(%x: tensor<4x8xf32>, %w: tensor<16x9xf32>) {
  // expected-error @+1 {{input features vs weight dim 1 mismatch: 8 vs 9}}
  %y = tnlm.linear %x, %w : (tensor<4x8xf32>, tensor<16x9xf32>) -> tensor<4x16xf32>
  return
}

// -----

func.func @linear_out_features(%x: tensor<4x8xf32>, %w: tensor<16x8xf32>) {
  // expected-error @+1 {{output features vs weight dim 0 mismatch: 15 vs 16}}
  %y = tnlm.linear %x, %w : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x15xf32>
  return
}

// -----

func.func @linear_weight_rank(%x: tensor<4x8xf32>, %w: tensor<2x16x8xf32>) {
  // expected-error @+1 {{weight must have rank 2}}
  %y = tnlm.linear %x, %w : (tensor<4x8xf32>, tensor<2x16x8xf32>) -> tensor<4x16xf32>
  return
}

// -----

func.func @embedding_width(%ids: tensor<2x3xi32>, %e: tensor<10x8xf32>) {
  // expected-error @+1 {{embedding width mismatch: 8 vs 9}}
  %x = tnlm.embedding %ids, %e : (tensor<2x3xi32>, tensor<10x8xf32>) -> tensor<2x3x9xf32>
  return
}

// -----

func.func @embedding_scale(%ids: tensor<2x3xi32>, %e: tensor<10x8xf32>) {
  // expected-error @+1 {{scale must be finite and positive}}
  %x = tnlm.embedding %ids, %e {scale = 0.0 : f32} : (tensor<2x3xi32>, tensor<10x8xf32>) -> tensor<2x3x8xf32>
  return
}

// -----

func.func @embedding_padding_idx(%ids: tensor<2x3xi32>, %e: tensor<10x8xf32>) {
  // expected-error @+1 {{padding_idx 10 is outside the vocabulary [0, 10)}}
  %x = tnlm.embedding %ids, %e {padding_idx = 10 : i64} : (tensor<2x3xi32>, tensor<10x8xf32>) -> tensor<2x3x8xf32>
  return
}

// -----

func.func @embedding_grad_padding_idx(%ids: tensor<2x3xi32>, %dx: tensor<2x3x8xf32>) {
  // expected-error @+1 {{padding_idx -1 is outside the vocabulary [0, 10)}}
  %e = tnlm.embedding_grad %ids, %dx {padding_idx = -1 : i64} : (tensor<2x3xi32>, tensor<2x3x8xf32>) -> tensor<10x8xf32>
  return
}

// -----

func.func @embedding_ids_rank(%ids: tensor<6xi32>, %e: tensor<10x8xf32>) {
  // expected-error @+1 {{ids must have rank 2}}
  %x = tnlm.embedding %ids, %e : (tensor<6xi32>, tensor<10x8xf32>) -> tensor<2x3x8xf32>
  return
}

// -----

func.func @split_uneven(%x: tensor<2x3x10xf32>) {
  // expected-error @+1 {{last dim 10 must equal 4 x 2}}
  %a, %b, %c, %d = tnlm.split %x : tensor<2x3x10xf32> -> tensor<2x3x2xf32>, tensor<2x3x2xf32>, tensor<2x3x2xf32>, tensor<2x3x2xf32>
  return
}

// -----

func.func @split_mixed_results(%x: tensor<2x3x8xf32>) {
  // expected-error @+1 {{all results must have one type}}
  %a, %b = tnlm.split %x : tensor<2x3x8xf32> -> tensor<2x3x4xf32>, tensor<2x3x5xf32>
  return
}

// -----

func.func @split_heads_width(%x: tensor<2x3x64xf32>) {
  // expected-error @+1 {{width 64 must equal heads x head dim = 3 x 16}}
  %y = tnlm.split_heads %x : tensor<2x3x64xf32> -> tensor<2x3x3x16xf32>
  return
}

// -----

func.func @merge_heads_width(%x: tensor<2x3x4x16xf32>) {
  // expected-error @+1 {{result width 60 must equal heads x head dim = 64}}
  %y = tnlm.merge_heads %x : tensor<2x3x4x16xf32> -> tensor<2x3x60xf32>
  return
}

// -----

func.func @lrpe_theta_heads(%x: tensor<1x5x4x16xf32>, %t: tensor<3x1x16xf32>) {
  // expected-error @+1 {{heads of theta and input mismatch: 3 vs 4}}
  %y = tnlm.lrpe %x, %t : tensor<1x5x4x16xf32>, tensor<3x1x16xf32> -> tensor<1x5x4x32xf32>
  return
}

// -----

func.func @lrpe_result_dim(%x: tensor<1x5x4x16xf32>, %t: tensor<4x1x16xf32>) {
  // expected-error @+1 {{result feature dim must be 2 x 16 = 32, got 16}}
  %y = tnlm.lrpe %x, %t : tensor<1x5x4x16xf32>, tensor<4x1x16xf32> -> tensor<1x5x4x16xf32>
  return
}

// -----

func.func @lrpe_theta_shape(%x: tensor<1x5x4x16xf32>, %t: tensor<4x2x16xf32>) {
  // expected-error @+1 {{theta must have shape [H, 1, dh]}}
  %y = tnlm.lrpe %x, %t : tensor<1x5x4x16xf32>, tensor<4x2x16xf32> -> tensor<1x5x4x32xf32>
  return
}

// -----

func.func @sglu_glu_width(%x: tensor<2x3x8xf32>, %w1: tensor<16x8xf32>, %w3: tensor<8x12xf32>) {
  // expected-error @+1 {{w3 dim 1 vs w1 dim 0 (glu width) mismatch: 12 vs 16}}
  %y = tnlm.sglu %x, %w1, %w1, %w3 : (tensor<2x3x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>, tensor<8x12xf32>) -> tensor<2x3x8xf32>
  return
}

// -----

func.func @sglu_w1_w2(%x: tensor<2x3x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<12x8xf32>, %w3: tensor<8x16xf32>) {
  // expected-error @+1 {{w1 and w2 must have one shape}}
  %y = tnlm.sglu %x, %w1, %w2, %w3 : (tensor<2x3x8xf32>, tensor<16x8xf32>, tensor<12x8xf32>, tensor<8x16xf32>) -> tensor<2x3x8xf32>
  return
}

// -----

func.func @lm_head_vocab(%x: tensor<2x3x8xf32>, %w: tensor<50x8xf32>) {
  // expected-error @+1 {{vocabulary vs weight dim 0 mismatch: 51 vs 50}}
  %y = tnlm.lm_head %x, %w : (tensor<2x3x8xf32>, tensor<50x8xf32>) -> tensor<2x3x51xf32>
  return
}

// -----

func.func @cross_entropy_labels(%l: tensor<2x3x50xf32>, %y: tensor<2x4xi32>) {
  // expected-error @+1 {{sequence mismatch: 3 vs 4}}
  %c = tnlm.cross_entropy %l, %y : (tensor<2x3x50xf32>, tensor<2x4xi32>) -> tensor<f32>
  return
}

// -----

func.func @cross_entropy_result(%l: tensor<2x3x50xf32>, %y: tensor<2x3xi32>) {
  // expected-error @+1 {{result #0 must be 0D tensor of 32-bit float values}}
  %c = tnlm.cross_entropy %l, %y : (tensor<2x3x50xf32>, tensor<2x3xi32>) -> tensor<1xf32>
  return
}

// -----

func.func @mul_type_mismatch(%a: tensor<2x3xf32>, %b: tensor<2x3xbf16>) {
  // expected-error @+1 {{requires the same type for all operands and results}}
  %c = "tnlm.mul"(%a, %b) : (tensor<2x3xf32>, tensor<2x3xbf16>) -> tensor<2x3xf32>
  return
}

// -----

// expected-error @+1 {{'tnlm.param' of argument #0 must be a non-empty string}}
func.func @param_not_string(%w: tensor<4x4xf32> {tnlm.param = 3 : i64}) {
  return
}

// -----

// expected-error @+1 {{parameter name 'w' is used by arguments #0 and #1}}
func.func @param_duplicate(%a: tensor<4x4xf32> {tnlm.param = "w"}, %b: tensor<4x4xf32> {tnlm.param = "w"}) {
  return
}

// -----

// expected-error @+1 {{parameter 'ids' must be a ranked tensor of f32, bf16 or f16, got 'tensor<4xi32>'}}
func.func @param_int(%a: tensor<4xi32> {tnlm.param = "ids"}) {
  return
}

// -----

// expected-error @+1 {{parameter 'w' must have a static shape, got 'tensor<?x4xf32>'}}
func.func @param_dynamic(%a: tensor<?x4xf32> {tnlm.param = "w"}) {
  return
}

// -----

// expected-error @+1 {{'tnlm.config' must be a dictionary}}
module attributes {tnlm.config = 3 : i64} {
}

// -----

// expected-error @+1 {{unknown tnlm attribute 'tnlm.bogus'}}
module attributes {tnlm.bogus = 1 : i64} {
}

// -----

// expected-error @+1 {{unknown tnlm argument attribute 'tnlm.weight'}}
func.func @unknown_arg_attr(%a: tensor<4xf32> {tnlm.weight = "w"}) {
  return
}

// -----

func.func @lightning_slopes(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{has 2 heads but 1 decay slopes}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_negative_slope(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{decay slope of head 0 must be finite and >= 0, got -1}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: -1.0, 0.5>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_qkvu_width(%x: tensor<1x8x192xf32>) {
  // expected-error @+1 {{qkvu width must be 4 x 64 = 256 (q, k, v, u), got 192}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x192xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_result_width(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{result width must be heads x head_dim = 64, got 32}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x32xf32>
  return
}

// -----

func.func @lightning_heads(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{heads and head_dim must be positive, got 0 and 32}}
  %o = tnlm.lightning_attention %x {heads = 0 : i64, head_dim = 32 : i64, slopes = array<f32>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_sequence(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{sequence mismatch: 8 vs 9}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x9x64xf32>
  return
}

// -----

func.func @lightning_block(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{block_size must be >= 0 (0: not chosen yet), got -64}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, block_size = -64 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_activation(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{activation must be "silu" or "none", got "relu"}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, activation = "relu", slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_eps(%x: tensor<1x8x256xf32>) {
  // expected-error @+1 {{eps must be finite and >= 0, got -1}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, eps = -1.0 : f32, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_theta_shape(%x: tensor<1x8x256xf32>, %t: tensor<2x1x16xf32>) {
  // expected-error @+1 {{theta must have shape [2, 1, 32], got 'tensor<2x1x16xf32>'}}
  %o = tnlm.lightning_attention %x lrpe(%t : tensor<2x1x16xf32>) {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_theta_type(%x: tensor<1x8x256xf32>, %t: tensor<2x1x32xbf16>) {
  // expected-error @+1 {{qkvu and theta must have the same element type, got 'f32' and 'bf16'}}
  %o = tnlm.lightning_attention %x lrpe(%t : tensor<2x1x32xbf16>) {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_offset_without_lrpe(%x: tensor<1x8x256xf32>, %off: index) {
  // expected-error @+1 {{a position offset needs LRPE (a theta operand)}}
  %o = tnlm.lightning_attention %x offset(%off) {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_element_type(%x: tensor<1x8x256xbf16>) {
  // expected-error @+1 {{qkvu and result must have the same element type, got 'bf16' and 'f32'}}
  %o = tnlm.lightning_attention %x {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x256xbf16> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @add_norm_types(%a: tensor<4x8xf32>, %b: tensor<4x8xf16>) {
  // expected-error @+1 {{requires the same type for all operands and results}}
  %s, %n = "tnlm.add_srms_norm"(%a, %b) : (tensor<4x8xf32>, tensor<4x8xf16>) -> (tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

func.func @add_norm_eps(%a: tensor<4x8xf32>) {
  // expected-error @+1 {{eps must be finite and >= 0, got -1}}
  %s, %n = tnlm.add_srms_norm %a, %a {eps = -1.0 : f32} : tensor<4x8xf32>
  return
}

// -----

func.func @add_norm_rank(%a: tensor<f32>) {
  // expected-error @+1 {{operands must have rank >= 1}}
  %s, %n = tnlm.add_srms_norm %a, %a : tensor<f32>
  return
}

// -----

func.func @gated_linear_shapes(%x: tensor<4x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<12x8xf32>) {
  // expected-error @+1 {{w1 and w2 must have one shape, got 'tensor<16x8xf32>' and 'tensor<12x8xf32>'}}
  %y = tnlm.gated_linear %x, %w1, %w2 : (tensor<4x8xf32>, tensor<16x8xf32>, tensor<12x8xf32>) -> tensor<4x16xf32>
  return
}

// -----

func.func @gated_linear_in(%x: tensor<4x6xf32>, %w: tensor<16x8xf32>) {
  // expected-error @+1 {{input width vs w1 dim 1 mismatch: 6 vs 8}}
  %y = tnlm.gated_linear %x, %w, %w : (tensor<4x6xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  return
}

// -----

func.func @gated_linear_out(%x: tensor<4x8xf32>, %w: tensor<16x8xf32>) {
  // expected-error @+1 {{result width vs w1 dim 0 (glu width) mismatch: 12 vs 16}}
  %y = tnlm.gated_linear %x, %w, %w : (tensor<4x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<4x12xf32>
  return
}

// -----

func.func @gated_linear_rows(%x: tensor<4x8xf32>, %w: tensor<16x8xf32>) {
  // expected-error @+1 {{leading dim 0 mismatch: 4 vs 5}}
  %y = tnlm.gated_linear %x, %w, %w : (tensor<4x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<5x16xf32>
  return
}

// -----

func.func @gated_linear_type(%x: tensor<4x8xf32>, %w: tensor<16x8xbf16>) {
  // expected-error @+1 {{input and w1 must have the same element type, got 'f32' and 'bf16'}}
  %y = tnlm.gated_linear %x, %w, %w : (tensor<4x8xf32>, tensor<16x8xbf16>, tensor<16x8xbf16>) -> tensor<4x16xf32>
  return
}

// -----

// The backward and optimizer ops (TnlmGradOps.td).

func.func @linear_weight_grad_features(%dy: tensor<2x5x16xf32>, %x: tensor<2x5x8xf32>) {
  // expected-error @+1 {{result dim 1 vs input features mismatch: 9 vs 8}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<2x5x16xf32>, tensor<2x5x8xf32>) -> tensor<16x9xf32>
  return
}

// -----

func.func @linear_weight_grad_out(%dy: tensor<2x5x16xf32>, %x: tensor<2x5x8xf32>) {
  // expected-error @+1 {{result dim 0 vs grad features mismatch: 12 vs 16}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<2x5x16xf32>, tensor<2x5x8xf32>) -> tensor<12x8xf32>
  return
}

// -----

func.func @linear_weight_grad_rows(%dy: tensor<2x5x16xf32>, %x: tensor<2x6x8xf32>) {
  // expected-error @+1 {{leading dim 1 mismatch: 5 vs 6}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<2x5x16xf32>, tensor<2x6x8xf32>) -> tensor<16x8xf32>
  return
}

// -----

func.func @linear_weight_grad_rank(%dy: tensor<10x16xf32>, %x: tensor<2x5x8xf32>) {
  // expected-error @+1 {{grad and input must have one rank >= 1, got 'tensor<10x16xf32>' and 'tensor<2x5x8xf32>'}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<10x16xf32>, tensor<2x5x8xf32>) -> tensor<16x8xf32>
  return
}

// -----

func.func @linear_weight_grad_dynamic(%dy: tensor<?x?x16xf32>, %x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{result must have a static shape, got 'tensor<16x?xf32>'}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<?x?x16xf32>, tensor<?x?x8xf32>) -> tensor<16x?xf32>
  return
}

// -----

func.func @linear_weight_grad_bf16(%dy: tensor<2x5x16xf32>, %x: tensor<2x5x8xf32>) {
  // expected-error @+1 {{result #0 must be tensor of 32-bit float values}}
  %dw = tnlm.linear_weight_grad %dy, %x : (tensor<2x5x16xf32>, tensor<2x5x8xf32>) -> tensor<16x8xbf16>
  return
}

// -----

func.func @lightning_grad_theta_without_theta_grad(%qkvu: tensor<1x8x64xf32>, %th: tensor<2x1x8xf32>, %dy: tensor<1x8x16xf32>) {
  // expected-error @+1 {{with theta, a theta_grad result of theta's shape is required}}
  %dx = tnlm.lightning_attention_grad %qkvu lrpe(%th : tensor<2x1x8xf32>), %dy {heads = 2 : i64, head_dim = 8 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x64xf32>, tensor<1x8x16xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @lightning_grad_theta_grad_shape(%qkvu: tensor<1x8x64xf32>, %th: tensor<2x1x8xf32>, %dy: tensor<1x8x16xf32>) {
  // expected-error @+1 {{theta and theta_grad must have one shape, got 'tensor<2x1x8xf32>' and 'tensor<2x1x4xf32>'}}
  %dx, %dth = tnlm.lightning_attention_grad %qkvu lrpe(%th : tensor<2x1x8xf32>), %dy {heads = 2 : i64, head_dim = 8 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x64xf32>, tensor<1x8x16xf32> -> tensor<1x8x64xf32>, tensor<2x1x4xf32>
  return
}

// -----

func.func @lightning_grad_theta_grad_without_theta(%qkvu: tensor<1x8x64xf32>, %dy: tensor<1x8x16xf32>) {
  // expected-error @+1 {{theta_grad needs a theta operand}}
  %dx, %dth = tnlm.lightning_attention_grad %qkvu, %dy {heads = 2 : i64, head_dim = 8 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x64xf32>, tensor<1x8x16xf32> -> tensor<1x8x64xf32>, tensor<2x1x8xf32>
  return
}

// -----

func.func @lightning_grad_width(%qkvu: tensor<1x8x64xf32>, %dy: tensor<1x8x32xf32>) {
  // expected-error @+1 {{grad width must be heads x head_dim = 16, got 32}}
  %dx = tnlm.lightning_attention_grad %qkvu, %dy {heads = 2 : i64, head_dim = 8 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<1x8x64xf32>, tensor<1x8x32xf32> -> tensor<1x8x64xf32>
  return
}

// -----

func.func @fill_dynamic_without_like() {
  // expected-error @+1 {{a result with dynamic dims 'tensor<?x8xf32>' needs a 'like' operand}}
  %z = tnlm.fill {value = 0.0 : f32} : tensor<?x8xf32>
  return
}

// -----

func.func @fill_like_rank(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'like' must have the result's rank 2, got 'tensor<?x?x8xf32>'}}
  %z = tnlm.fill like(%x : tensor<?x?x8xf32>) {value = 0.0 : f32} : tensor<?x8xf32>
  return
}

// -----

func.func @fill_not_finite() {
  // expected-error @+1 {{value must be finite}}
  %z = tnlm.fill {value = 0x7F800000 : f32} : tensor<4xf32>
  return
}

// -----

func.func @adamw_param_vs_grad(%p: tensor<4x8xf32>, %g: tensor<8x4xf32>, %step: tensor<i32>, %s: tensor<f32>, %hp: tensor<16xf32>) {
  // expected-error @+1 {{param and grad must have one shape, got 'tensor<4x8xf32>' and 'tensor<8x4xf32>'}}
  %np, %m, %v = tnlm.adamw %p, %g, %g, %g, %step, %s, %s, %hp : (tensor<4x8xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<i32>, tensor<f32>, tensor<f32>, tensor<16xf32>) -> (tensor<4x8xf32>, tensor<8x4xf32>, tensor<8x4xf32>)
  return
}

// -----

func.func @adamw_moments_vs_grad(%p: tensor<4x8xf32>, %m: tensor<4x4xf32>, %step: tensor<i32>, %s: tensor<f32>, %hp: tensor<16xf32>) {
  // expected-error @+1 {{all of {grad, exp_avg, exp_avg_sq, new_exp_avg, new_exp_avg_sq} have same type}}
  %np, %nm, %nv = tnlm.adamw %p, %p, %m, %p, %step, %s, %s, %hp : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x4xf32>, tensor<4x8xf32>, tensor<i32>, tensor<f32>, tensor<f32>, tensor<16xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

func.func @adamw_new_param_type(%p: tensor<4x8xbf16>, %g: tensor<4x8xf32>, %step: tensor<i32>, %s: tensor<f32>, %hp: tensor<16xf32>) {
  // expected-error @+1 {{all of {param, new_param} have same type}}
  %np, %m, %v = tnlm.adamw %p, %g, %g, %g, %step, %s, %s, %hp : (tensor<4x8xbf16>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<i32>, tensor<f32>, tensor<f32>, tensor<16xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

func.func @global_norm_no_grads(%hp: tensor<16xf32>) {
  // expected-error @+1 {{needs at least one gradient}}
  %n = "tnlm.global_norm"(%hp) : (tensor<16xf32>) -> tensor<f32>
  return
}

// -----

func.func @lrpe_grad_theta_heads(%x: tensor<1x8x2x4xf32>, %th: tensor<3x1x4xf32>, %dy: tensor<1x8x2x8xf32>) {
  // expected-error @+1 {{theta must be [H, 1, dh] for input 'tensor<1x8x2x4xf32>', got 'tensor<3x1x4xf32>'}}
  %dx, %dth = tnlm.lrpe_grad %x, %th, %dy : (tensor<1x8x2x4xf32>, tensor<3x1x4xf32>, tensor<1x8x2x8xf32>) -> (tensor<1x8x2x4xf32>, tensor<3x1x4xf32>)
  return
}

// -----

func.func @gated_linear_grad_rows(%x: tensor<2x5x8xf32>, %w: tensor<12x8xf32>, %dy: tensor<2x6x12xf32>) {
  // expected-error @+1 {{leading dim 1 mismatch: 5 vs 6}}
  %dx, %dw1, %dw2 = tnlm.gated_linear_grad %x, %w, %w, %dy : (tensor<2x5x8xf32>, tensor<12x8xf32>, tensor<12x8xf32>, tensor<2x6x12xf32>) -> (tensor<2x5x8xf32>, tensor<12x8xf32>, tensor<12x8xf32>)
  return
}
