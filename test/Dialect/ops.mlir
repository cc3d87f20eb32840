// Every tnlm op in its custom form; parsed, printed, and parsed again (custom and generic).
// RUN: tnlm-opt %s | tnlm-opt | FileCheck %s
// RUN: tnlm-opt %s --mlir-print-op-generic | tnlm-opt | FileCheck %s
// RUN: tnlm-opt %s --verify-roundtrip > /dev/null

// CHECK-LABEL: func.func @token_mixer
// CHECK-SAME: {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"}
func.func @token_mixer(%x: tensor<?x?x64xf32>,
                       %w: tensor<256x64xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"},
                       %theta: tensor<2x1x32xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"},
                       %wo: tensor<64x64xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"},
                       %off: index) -> tensor<?x?x64xf32> {
  // CHECK: %[[N:.*]] = tnlm.srms_norm %{{.*}} : tensor<?x?x64xf32>
  %n = tnlm.srms_norm %x {eps = 1.0e-6 : f32} : tensor<?x?x64xf32>
  // CHECK: %[[QKVU:.*]] = tnlm.linear %[[N]], %{{.*}} : (tensor<?x?x64xf32>, tensor<256x64xf32>) -> tensor<?x?x256xf32>
  %qkvu = tnlm.linear %n, %w : (tensor<?x?x64xf32>, tensor<256x64xf32>) -> tensor<?x?x256xf32>
  // CHECK: %[[S:.*]]:4 = tnlm.split %[[QKVU]] : tensor<?x?x256xf32> -> tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>
  %q, %k, %v, %u = tnlm.split %qkvu : tensor<?x?x256xf32> -> tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>
  // CHECK: tnlm.silu %[[S]]#0 : tensor<?x?x64xf32>
  %qa = tnlm.silu %q : tensor<?x?x64xf32>
  %ka = tnlm.silu %k : tensor<?x?x64xf32>
  // CHECK: tnlm.split_heads %{{.*}} : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
  %qh = tnlm.split_heads %qa : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
  %kh = tnlm.split_heads %ka : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
  %vh = tnlm.split_heads %v : tensor<?x?x64xf32> -> tensor<?x?x2x32xf32>
  // CHECK: tnlm.lrpe %{{.*}}, %{{.*}} offset(%{{.*}}) : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
  %ql = tnlm.lrpe %qh, %theta offset(%off) : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
  // CHECK: tnlm.lrpe %{{.*}}, %{{.*}} : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
  %kl = tnlm.lrpe %kh, %theta : tensor<?x?x2x32xf32>, tensor<2x1x32xf32> -> tensor<?x?x2x64xf32>
  // CHECK: tnlm.decay_linear_attention %{{.*}}, %{{.*}}, %{{.*}} {slopes = array<f32: 5.000000e-01, 3.906250e-08>} : (tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x32xf32>) -> tensor<?x?x2x32xf32>
  %o = tnlm.decay_linear_attention %ql, %kl, %vh {slopes = array<f32: 0.5, 3.90625e-08>} : (tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x32xf32>) -> tensor<?x?x2x32xf32>
  // CHECK: tnlm.merge_heads %{{.*}} : tensor<?x?x2x32xf32> -> tensor<?x?x64xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x32xf32> -> tensor<?x?x64xf32>
  %on = tnlm.srms_norm %om : tensor<?x?x64xf32>
  // CHECK: tnlm.mul %[[S]]#3, %{{.*}} : tensor<?x?x64xf32>
  %g = tnlm.mul %u, %on : tensor<?x?x64xf32>
  %out = tnlm.linear %g, %wo : (tensor<?x?x64xf32>, tensor<64x64xf32>) -> tensor<?x?x64xf32>
  // CHECK: tnlm.add
  %r = tnlm.add %x, %out : tensor<?x?x64xf32>
  return %r : tensor<?x?x64xf32>
}

// CHECK-LABEL: func.func @head_and_loss
func.func @head_and_loss(%ids: tensor<4x7xi32>, %labels: tensor<4x7xi32>,
                         %e: tensor<256x64xbf16> {tnlm.param = "model.embed_tokens.weight"},
                         %w1: tensor<128x64xbf16> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"},
                         %w2: tensor<128x64xbf16> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"},
                         %w3: tensor<64x128xbf16> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}) -> tensor<f32> {
  // CHECK: tnlm.embedding %{{.*}}, %{{.*}} {scale = 8.000000e+00 : f32} : (tensor<4x7xi32>, tensor<256x64xbf16>) -> tensor<4x7x64xbf16>
  %x = tnlm.embedding %ids, %e {scale = 8.0 : f32} : (tensor<4x7xi32>, tensor<256x64xbf16>) -> tensor<4x7x64xbf16>
  // CHECK: tnlm.sglu %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x7x64xbf16>, tensor<128x64xbf16>, tensor<128x64xbf16>, tensor<64x128xbf16>) -> tensor<4x7x64xbf16>
  %m = tnlm.sglu %x, %w1, %w2, %w3 : (tensor<4x7x64xbf16>, tensor<128x64xbf16>, tensor<128x64xbf16>, tensor<64x128xbf16>) -> tensor<4x7x64xbf16>
  // CHECK: tnlm.lm_head %{{.*}}, %{{.*}} : (tensor<4x7x64xbf16>, tensor<256x64xbf16>) -> tensor<4x7x256xf32>
  %l = tnlm.lm_head %m, %e : (tensor<4x7x64xbf16>, tensor<256x64xbf16>) -> tensor<4x7x256xf32>
  // CHECK: tnlm.cross_entropy %{{.*}}, %{{.*}} : (tensor<4x7x256xf32>, tensor<4x7xi32>) -> tensor<f32>
  %c = tnlm.cross_entropy %l, %labels : (tensor<4x7x256xf32>, tensor<4x7xi32>) -> tensor<f32>
  // CHECK: ignore_index = 0 : i64
  %c2 = tnlm.cross_entropy %l, %labels {ignore_index = 0 : i64} : (tensor<4x7x256xf32>, tensor<4x7xi32>) -> tensor<f32>
  return %c : tensor<f32>
}

// f16 is accepted too.
// CHECK-LABEL: func.func @f16_ops
func.func @f16_ops(%a: tensor<3x5xf16>) -> tensor<3x5xf16> {
  // CHECK: tnlm.silu %{{.*}} : tensor<3x5xf16>
  %s = tnlm.silu %a : tensor<3x5xf16>
  %p = tnlm.mul %s, %a : tensor<3x5xf16>
  return %p : tensor<3x5xf16>
}

// The fused forms produced by the fusion passes.
// CHECK-LABEL: func.func @fused_forms
func.func @fused_forms(%qkvu: tensor<?x?x256xf32>, %theta: tensor<2x1x32xf32>, %off: index,
                       %x: tensor<?x?x64xf32>, %w1: tensor<128x64xf32>, %w2: tensor<128x64xf32>)
    -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x128xf32>) {
  // CHECK: tnlm.lightning_attention %{{.*}} lrpe(%{{.*}} : tensor<2x1x32xf32>) offset(%{{.*}}) {block_size = 64 : i64, head_dim = 32 : i64, heads = 2 : i64, slopes = array<f32: 6.250000e-02, 3.906250e-08>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  %a = tnlm.lightning_attention %qkvu lrpe(%theta : tensor<2x1x32xf32>) offset(%off) {heads = 2 : i64, head_dim = 32 : i64, block_size = 64 : i64, slopes = array<f32: 0.0625, 3.90625e-08>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  // CHECK: tnlm.lightning_attention %{{.*}} {activation = "none", eps = 9.99999974E-6 : f32, head_dim = 16 : i64, heads = 4 : i64, slopes = array<f32: 5.000000e-01, 2.500000e-01, 1.250000e-01, 6.250000e-02>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  %b = tnlm.lightning_attention %qkvu {heads = 4 : i64, head_dim = 16 : i64, activation = "none", eps = 1.0e-5 : f32, slopes = array<f32: 0.5, 0.25, 0.125, 0.0625>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  // CHECK: %{{.*}}, %{{.*}} = tnlm.add_srms_norm %{{.*}}, %{{.*}} : tensor<?x?x64xf32>
  %h, %n = tnlm.add_srms_norm %x, %a : tensor<?x?x64xf32>
  // CHECK: tnlm.gated_linear %{{.*}}, %{{.*}}, %{{.*}} : (tensor<?x?x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>) -> tensor<?x?x128xf32>
  %p = tnlm.gated_linear %n, %w1, %w2 : (tensor<?x?x64xf32>, tensor<128x64xf32>, tensor<128x64xf32>) -> tensor<?x?x128xf32>
  return %b, %h, %n, %p : tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x128xf32>
}
