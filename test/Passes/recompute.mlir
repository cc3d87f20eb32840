// tnlm-recompute on hand-written models, after tnlm-autodiff alone (the unfused ops): the
// residual stream (embedding, adds of a residual value) is kept, the rest of each segment is
// recomputed in its backward, once per region, right before its first reader; the head after
// the last residual value is kept.
// RUN: tnlm-opt %s -split-input-file --tnlm-autodiff --tnlm-recompute=policy=full --mlir-print-debuginfo --mlir-print-local-scope | FileCheck %s --check-prefix=FULL
// RUN: tnlm-opt %s -split-input-file --tnlm-autodiff -o %t.none.mlir
// RUN: tnlm-opt %s -split-input-file --tnlm-autodiff --tnlm-recompute -o %t.default.mlir
// RUN: tnlm-opt %s -split-input-file --tnlm-autodiff --tnlm-recompute=policy=attention -o %t.attention.mlir
// RUN: diff %t.none.mlir %t.default.mlir
// RUN: diff %t.none.mlir %t.attention.mlir
// RUN: not tnlm-opt %s -split-input-file --tnlm-recompute=policy=some 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: error: tnlm-recompute: unknown policy 'some' (expected none, attention or full)
// A module without @train_step (inference) is left alone.
// RUN: tnlmc %models/tiny.json --emit=mlir -o %t.infer.mlir
// RUN: tnlm-opt %t.infer.mlir -o %t.infer.none.mlir
// RUN: tnlm-opt %t.infer.mlir --tnlm-recompute=policy=full -o %t.infer.full.mlir
// RUN: diff %t.infer.none.mlir %t.infer.full.mlir

// Two residual blocks: x + down(silu(up(norm(x)))).
// FULL-LABEL: func.func @train_step
// FULL: %[[H0:[0-9]+]] = tnlm.embedding {{.*}} loc("embed")
// FULL: %[[H1:[0-9]+]] = tnlm.add %[[H0]], %{{[0-9]+}} : tensor<?x?x8xf32> loc("l0.residual")
// FULL: %[[H2:[0-9]+]] = tnlm.add %[[H1]], %{{[0-9]+}} : tensor<?x?x8xf32> loc("l1.residual")
// FULL: %[[F:[0-9]+]] = tnlm.srms_norm %[[H2]] : tensor<?x?x8xf32> loc("final_norm")
// FULL: tnlm.fill {{.*}} loc("loss/grad")
// FULL: tnlm.linear_weight_grad %{{[0-9]+}}, %[[F]] : {{.*}} loc("head/grad")
// FULL: %[[DS1:[0-9]+]] = tnlm.linear_input_grad {{.*}} loc("l1.down/grad")
// FULL-NEXT: %[[N1:[0-9]+]] = tnlm.srms_norm %[[H1]] : {{.*}} loc("l1.norm/recompute")
// FULL-NEXT: %[[A1:[0-9]+]] = tnlm.linear %[[N1]], %arg5 {{.*}} loc("l1.up/recompute")
// FULL-NEXT: %[[S1:[0-9]+]] = tnlm.silu %[[A1]] : {{.*}} loc("l1.act/recompute")
// FULL-NEXT: tnlm.linear_weight_grad %{{[0-9]+}}, %[[S1]] : {{.*}} loc("l1.down/grad")
// FULL-NEXT: tnlm.add %arg{{[0-9]+}}, %{{[0-9]+}} : {{.*}} loc("{{.*}}/accumulate"
// FULL-NEXT: %[[DA1:[0-9]+]] = tnlm.silu_grad %[[A1]], %[[DS1]] {{.*}} loc("l1.act/grad")
// FULL-NEXT: tnlm.linear_input_grad %[[DA1]], %arg5 {{.*}} loc("l1.up/grad")
// FULL-NEXT: tnlm.linear_weight_grad %[[DA1]], %[[N1]] : {{.*}} loc("l1.up/grad")
// FULL-NEXT: tnlm.add %arg{{[0-9]+}}, %{{[0-9]+}} : {{.*}} loc("{{.*}}/accumulate"
// FULL-NEXT: tnlm.srms_norm_grad %[[H1]], {{.*}} loc("l1.norm/grad")
// FULL: tnlm.linear_input_grad {{.*}} loc("l0.down/grad")
// FULL-NEXT: %[[N0:[0-9]+]] = tnlm.srms_norm %[[H0]] : {{.*}} loc("l0.norm/recompute")
// FULL-NEXT: %[[A0:[0-9]+]] = tnlm.linear %[[N0]], %arg3 {{.*}} loc("l0.up/recompute")
// FULL-NEXT: %[[S0:[0-9]+]] = tnlm.silu %[[A0]] : {{.*}} loc("l0.act/recompute")
// FULL-NEXT: tnlm.linear_weight_grad %{{[0-9]+}}, %[[S0]] : {{.*}} loc("l0.down/grad")
// FULL-NEXT: tnlm.add %arg{{[0-9]+}}, %{{[0-9]+}} : {{.*}} loc("{{.*}}/accumulate"
// FULL-NEXT: tnlm.silu_grad %[[A0]], {{.*}} loc("l0.act/grad")
// FULL-NOT: /recompute")
// FULL: return
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>,
                %E: tensor<32x8xf32> {tnlm.param = "embed"},
                %U0: tensor<16x8xf32> {tnlm.param = "l0.up"},
                %D0: tensor<8x16xf32> {tnlm.param = "l0.down"},
                %U1: tensor<16x8xf32> {tnlm.param = "l1.up"},
                %D1: tensor<8x16xf32> {tnlm.param = "l1.down"}) -> tensor<f32> {
  %h0 = tnlm.embedding %ids, %E : (tensor<?x?xi32>, tensor<32x8xf32>) -> tensor<?x?x8xf32> loc("embed")
  %n0 = tnlm.srms_norm %h0 : tensor<?x?x8xf32> loc("l0.norm")
  %a0 = tnlm.linear %n0, %U0 : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32> loc("l0.up")
  %s0 = tnlm.silu %a0 : tensor<?x?x16xf32> loc("l0.act")
  %o0 = tnlm.linear %s0, %D0 : (tensor<?x?x16xf32>, tensor<8x16xf32>) -> tensor<?x?x8xf32> loc("l0.down")
  %h1 = tnlm.add %h0, %o0 : tensor<?x?x8xf32> loc("l0.residual")
  %n1 = tnlm.srms_norm %h1 : tensor<?x?x8xf32> loc("l1.norm")
  %a1 = tnlm.linear %n1, %U1 : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32> loc("l1.up")
  %s1 = tnlm.silu %a1 : tensor<?x?x16xf32> loc("l1.act")
  %o1 = tnlm.linear %s1, %D1 : (tensor<?x?x16xf32>, tensor<8x16xf32>) -> tensor<?x?x8xf32> loc("l1.down")
  %h2 = tnlm.add %h1, %o1 : tensor<?x?x8xf32> loc("l1.residual")
  %f = tnlm.srms_norm %h2 : tensor<?x?x8xf32> loc("final_norm")
  %logits = tnlm.lm_head %f, %E : (tensor<?x?x8xf32>, tensor<32x8xf32>) -> tensor<?x?x32xf32> loc("head")
  %l = tnlm.cross_entropy %logits, %labels : (tensor<?x?x32xf32>, tensor<?x?xi32>) -> tensor<f32> loc("loss")
  return %l : tensor<f32>
}

// -----

// Without location names the backward is located at `grad` and the clones at `recompute`.
// FULL-LABEL: func.func @train_step
// FULL: %[[H:[0-9]+]] = tnlm.embedding
// FULL: tnlm.fill {{.*}} loc("grad"(
// FULL: %[[N:[0-9]+]] = tnlm.srms_norm %[[H]] : {{.*}} loc("recompute"(
// FULL-NEXT: tnlm.linear_weight_grad %{{[0-9]+}}, %[[N]] : {{.*}} loc("grad"(
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>,
                %E: tensor<32x8xf32> {tnlm.param = "embed"},
                %W: tensor<8x8xf32> {tnlm.param = "w"}) -> tensor<f32> {
  %h0 = tnlm.embedding %ids, %E : (tensor<?x?xi32>, tensor<32x8xf32>) -> tensor<?x?x8xf32>
  %n0 = tnlm.srms_norm %h0 : tensor<?x?x8xf32>
  %o0 = tnlm.linear %n0, %W : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32>
  %h1 = tnlm.add %h0, %o0 : tensor<?x?x8xf32>
  %logits = tnlm.lm_head %h1, %E : (tensor<?x?x8xf32>, tensor<32x8xf32>) -> tensor<?x?x32xf32>
  %l = tnlm.cross_entropy %logits, %labels : (tensor<?x?x32xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}
