// tnlm-autodiff: @loss → @eval_loss, @train_step (forward, loss, reverse sweep, gradient
// accumulation into the f32 state) and @optimizer_step (global norm, LR schedule, clipping,
// AdamW, zeroed gradients, step + 1).
// RUN: tnlm-opt %s --tnlm-autodiff -split-input-file | FileCheck %s
// RUN: tnlm-opt %s --tnlm-autodiff -split-input-file --mlir-print-debuginfo -mlir-print-local-scope | FileCheck %s --check-prefix=LOC

// One layer in fused form (what tnlm-train-pipeline differentiates): d = 8, 2 heads of 4,
// LRPE, GLU width 12, vocab 16, tied embedding.
// CHECK-LABEL: func.func @loss(

// @eval_loss: the forward and the loss inlined, nothing of the backward.
// CHECK-LABEL: func.func @eval_loss(
// CHECK-SAME: %[[IDS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "ids"}, %[[LABELS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "labels"}
// CHECK-SAME: %{{[^:]*}}: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"}
// CHECK-SAME: -> (tensor<f32> {tnlm.output = "loss"})
// CHECK: tnlm.embedding %[[IDS]]
// CHECK: %[[L:.*]] = tnlm.cross_entropy %{{.*}}, %[[LABELS]]
// CHECK-NEXT: return %[[L]] : tensor<f32>
// CHECK-NOT: _grad
// CHECK-LABEL: func.func @train_step(

// The signature: data, parameters (as in @loss), then the gradient state, one f32 tensor per
// parameter; results: the loss, then the new gradient state, each marked with its state.
// CHECK-SAME: %[[IDS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "ids"}, %[[LABELS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "labels"}
// CHECK-SAME: %[[E:[^:]*]]: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"}
// CHECK-SAME: %[[WQKVU:[^:]*]]: tensor<32x8xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"}
// CHECK-SAME: %[[WOUT:[^:]*]]: tensor<8x8xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"}
// CHECK-SAME: %[[TH:[^:]*]]: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[W1:[^:]*]]: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"}
// CHECK-SAME: %[[W2:[^:]*]]: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"}
// CHECK-SAME: %[[W3:[^:]*]]: tensor<8x12xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}
// CHECK-SAME: %[[GE:[^:]*]]: tensor<16x8xf32> {tnlm.state = "grad/model.embed_tokens.weight"}
// CHECK-SAME: %[[GQKVU:[^:]*]]: tensor<32x8xf32> {tnlm.state = "grad/model.layers.0.token_mixer.qkvu_proj.weight"}
// CHECK-SAME: %[[GOUT:[^:]*]]: tensor<8x8xf32> {tnlm.state = "grad/model.layers.0.token_mixer.out_proj.weight"}
// CHECK-SAME: %[[GTH:[^:]*]]: tensor<2x1x4xf32> {tnlm.state = "grad/model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[GW1:[^:]*]]: tensor<12x8xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l1.weight"}
// CHECK-SAME: %[[GW2:[^:]*]]: tensor<12x8xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l2.weight"}
// CHECK-SAME: %[[GW3:[^:]*]]: tensor<8x12xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l3.weight"})
// CHECK-SAME: -> (tensor<f32> {tnlm.output = "loss"},
// CHECK-SAME: tensor<16x8xf32> {tnlm.updates = "grad/model.embed_tokens.weight"},
// CHECK-SAME: tensor<32x8xf32> {tnlm.updates = "grad/model.layers.0.token_mixer.qkvu_proj.weight"},
// CHECK-SAME: tensor<8x8xf32> {tnlm.updates = "grad/model.layers.0.token_mixer.out_proj.weight"},
// CHECK-SAME: tensor<2x1x4xf32> {tnlm.updates = "grad/model.layers.0.token_mixer.lrpe.theta"},
// CHECK-SAME: tensor<12x8xf32> {tnlm.updates = "grad/model.layers.0.channel_mixer.l1.weight"},
// CHECK-SAME: tensor<12x8xf32> {tnlm.updates = "grad/model.layers.0.channel_mixer.l2.weight"},
// CHECK-SAME: tensor<8x12xf32> {tnlm.updates = "grad/model.layers.0.channel_mixer.l3.weight"})

// The forward, once; its values are what the backward reads.
// CHECK-NEXT: %[[X:.*]] = tnlm.embedding %[[IDS]], %[[E]] {padding_idx = 0 : i64, scale = 2.000000e+00 : f32}
// CHECK-NEXT: %[[N:.*]] = tnlm.srms_norm %[[X]]
// CHECK-NEXT: %[[QKVU:.*]] = tnlm.linear %[[N]], %[[WQKVU]]
// CHECK-NEXT: %[[A:.*]] = tnlm.lightning_attention %[[QKVU]] lrpe(%[[TH]] : tensor<2x1x4xf32>)
// CHECK-NEXT: %[[O:.*]] = tnlm.linear %[[A]], %[[WOUT]]
// CHECK-NEXT: %[[H:.*]], %[[HN:.*]] = tnlm.add_srms_norm %[[X]], %[[O]]
// CHECK-NEXT: %[[G:.*]] = tnlm.gated_linear %[[HN]], %[[W1]], %[[W2]]
// CHECK-NEXT: %[[M:.*]] = tnlm.linear %[[G]], %[[W3]]
// CHECK-NEXT: %[[H2:.*]], %[[HN2:.*]] = tnlm.add_srms_norm %[[H]], %[[M]]
// CHECK-NEXT: %[[Z:.*]] = tnlm.lm_head %[[HN2]], %[[E]]
// CHECK-NEXT: %[[L:.*]] = tnlm.cross_entropy %[[Z]], %[[LABELS]]

// The reverse sweep, from the seed d loss/d loss = 1, in reverse forward order.
// CHECK-NEXT: %[[SEED:.*]] = tnlm.fill {value = 1.000000e+00 : f32} : tensor<f32>
// CHECK-NEXT: %[[DZ:.*]] = tnlm.cross_entropy_grad %[[Z]], %[[LABELS]], %[[SEED]] :
// lm_head: dW reads the final norm's output (saved), dx reads the (tied) weight.
// CHECK-NEXT: %[[DHN2:.*]] = tnlm.linear_input_grad %[[DZ]], %[[E]] :
// CHECK-NEXT: %[[DEHEAD:.*]] = tnlm.linear_weight_grad %[[DZ]], %[[HN2]] : {{.*}} -> tensor<16x8xf32>
// Each weight gradient is added to its state as soon as it exists (the lowering writes the
// state in place, so no weight gradient stays live to the end of the backward).
// CHECK-NEXT: %[[NGE1:.*]] = tnlm.add %[[GE]], %[[DEHEAD]] : tensor<16x8xf32>
// The final norm: its sum has no other use, so no sum_grad; the norm reads the saved sum.
// CHECK-NEXT: %[[DH2:.*]] = tnlm.add_srms_norm_grad %[[H2]], %[[DHN2]] : (tensor<?x?x8xf32>, tensor<?x?x8xf32>) -> tensor<?x?x8xf32>
// CHECK-NEXT: %[[DG:.*]] = tnlm.linear_input_grad %[[DH2]], %[[W3]]
// CHECK-NEXT: %[[DW3:.*]] = tnlm.linear_weight_grad %[[DH2]], %[[G]]
// CHECK-NEXT: %[[NGW3:.*]] = tnlm.add %[[GW3]], %[[DW3]] : tensor<8x12xf32>
// gated_linear_grad reads its input (a, b are recomputed, not saved).
// CHECK-NEXT: %[[DHN:.*]], %[[DW1:.*]], %[[DW2:.*]] = tnlm.gated_linear_grad %[[HN]], %[[W1]], %[[W2]], %[[DG]]
// CHECK-NEXT: %[[NGW1:.*]] = tnlm.add %[[GW1]], %[[DW1]] : tensor<12x8xf32>
// CHECK-NEXT: %[[NGW2:.*]] = tnlm.add %[[GW2]], %[[DW2]] : tensor<12x8xf32>
// The residual stream's cotangent flows through the sum of the first add_srms_norm.
// CHECK-NEXT: %[[DH:.*]] = tnlm.add_srms_norm_grad %[[H]], %[[DHN]] sum_grad(%[[DH2]])
// CHECK-NEXT: %[[DA:.*]] = tnlm.linear_input_grad %[[DH]], %[[WOUT]]
// CHECK-NEXT: %[[DWOUT:.*]] = tnlm.linear_weight_grad %[[DH]], %[[A]]
// CHECK-NEXT: %[[NGOUT:.*]] = tnlm.add %[[GOUT]], %[[DWOUT]] : tensor<8x8xf32>
// The fused backward reads qkvu (the only saved value of the token mixer) and θ.
// CHECK-NEXT: %[[DQKVU:.*]], %[[DTH:.*]] = tnlm.lightning_attention_grad %[[QKVU]] lrpe(%[[TH]] : tensor<2x1x4xf32>), %[[DA]] {block_size = 16 : i64, head_dim = 4 : i64, heads = 2 : i64, slopes = array<f32: 5.000000e-01, 2.500000e-01>} : tensor<?x?x32xf32>, tensor<?x?x8xf32> -> tensor<?x?x32xf32>, tensor<2x1x4xf32>
// CHECK-NEXT: %[[NGTH:.*]] = tnlm.add %[[GTH]], %[[DTH]] : tensor<2x1x4xf32>
// CHECK-NEXT: %[[DN:.*]] = tnlm.linear_input_grad %[[DQKVU]], %[[WQKVU]]
// linear_weight_grad of qkvu_proj reads the forward's normalized input.
// CHECK-NEXT: %[[DWQKVU:.*]] = tnlm.linear_weight_grad %[[DQKVU]], %[[N]]
// CHECK-NEXT: %[[NGQKVU:.*]] = tnlm.add %[[GQKVU]], %[[DWQKVU]] : tensor<32x8xf32>
// CHECK-NEXT: %[[DXN:.*]] = tnlm.srms_norm_grad %[[X]], %[[DN]]
// x is read twice (the pre-norm and the residual): its cotangents are summed.
// CHECK-NEXT: %[[DX:.*]] = tnlm.add %[[DH]], %[[DXN]] : tensor<?x?x8xf32>
// The padding index carries over: the VJP skips its tokens (nn.Embedding(padding_idx=0)).
// CHECK-NEXT: %[[DEIN:.*]] = tnlm.embedding_grad %[[IDS]], %[[DX]] {padding_idx = 0 : i64, scale = 2.000000e+00 : f32} : (tensor<?x?xi32>, tensor<?x?x8xf32>) -> tensor<16x8xf32>
// The tied embedding: the lookup's gradient is added after the head's.
// CHECK-NEXT: %[[NGE:.*]] = tnlm.add %[[NGE1]], %[[DEIN]] : tensor<16x8xf32>
// CHECK-NEXT: return %[[L]], %[[NGE]], %[[NGQKVU]], %[[NGOUT]], %[[NGTH]], %[[NGW1]], %[[NGW2]], %[[NGW3]] :

// @optimizer_step: hparams, parameters, then grad/, adam_m/, adam_v/ state and the step.
// CHECK-LABEL: func.func @optimizer_step(
// CHECK-SAME: %[[HP:[^:]*]]: tensor<16xf32> {tnlm.input = "hparams"}
// CHECK-SAME: %[[P0:[^:]*]]: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"}
// CHECK-SAME: %[[P3:[^:]*]]: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[G0:[^:]*]]: tensor<16x8xf32> {tnlm.state = "grad/model.embed_tokens.weight"}
// CHECK-SAME: %[[G1:[^:]*]]: tensor<32x8xf32> {tnlm.state = "grad/model.layers.0.token_mixer.qkvu_proj.weight"}
// CHECK-SAME: %[[G2:[^:]*]]: tensor<8x8xf32> {tnlm.state = "grad/model.layers.0.token_mixer.out_proj.weight"}
// CHECK-SAME: %[[G3:[^:]*]]: tensor<2x1x4xf32> {tnlm.state = "grad/model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[G4:[^:]*]]: tensor<12x8xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l1.weight"}
// CHECK-SAME: %[[G5:[^:]*]]: tensor<12x8xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l2.weight"}
// CHECK-SAME: %[[G6:[^:]*]]: tensor<8x12xf32> {tnlm.state = "grad/model.layers.0.channel_mixer.l3.weight"}
// CHECK-SAME: %[[M0:[^:]*]]: tensor<16x8xf32> {tnlm.state = "adam_m/model.embed_tokens.weight"}
// CHECK-SAME: %[[M3:[^:]*]]: tensor<2x1x4xf32> {tnlm.state = "adam_m/model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[V0:[^:]*]]: tensor<16x8xf32> {tnlm.state = "adam_v/model.embed_tokens.weight"}
// CHECK-SAME: %[[V3:[^:]*]]: tensor<2x1x4xf32> {tnlm.state = "adam_v/model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[STEP:[^:]*]]: tensor<i32> {tnlm.state = "step"})
// Results: grad_norm and lr, then params, m, v, the zeroed gradients and the step, each
// updating the state of its name.
// CHECK-SAME: -> (tensor<f32> {tnlm.output = "grad_norm"}, tensor<f32> {tnlm.output = "lr"},
// CHECK-SAME: tensor<16x8xf32> {tnlm.updates = "model.embed_tokens.weight"}
// CHECK-SAME: tensor<16x8xf32> {tnlm.updates = "adam_m/model.embed_tokens.weight"}
// CHECK-SAME: tensor<16x8xf32> {tnlm.updates = "adam_v/model.embed_tokens.weight"}
// CHECK-SAME: tensor<16x8xf32> {tnlm.updates = "grad/model.embed_tokens.weight"}
// CHECK-SAME: tensor<8x12xf32> {tnlm.updates = "grad/model.layers.0.channel_mixer.l3.weight"}, tensor<i32> {tnlm.updates = "step"})
// CHECK-NEXT: %[[NORM:.*]] = tnlm.global_norm %[[HP]], %[[G0]], %[[G1]], %[[G2]], %[[G3]], %[[G4]], %[[G5]], %[[G6]] :
// CHECK-NEXT: %[[LR:.*]] = tnlm.lr_schedule %[[STEP]], %[[HP]] : (tensor<i32>, tensor<16xf32>) -> tensor<f32>
// CHECK-NEXT: %[[SCALE:.*]] = tnlm.clip_scale %[[NORM]], %[[HP]] : (tensor<f32>, tensor<16xf32>) -> tensor<f32>
// CHECK-NEXT: %[[NP0:[^,]*]], %[[NM0:[^,]*]], %[[NV0:[^ ]*]] = tnlm.adamw %[[P0]], %[[G0]], %[[M0]], %[[V0]], %[[STEP]], %[[LR]], %[[SCALE]], %[[HP]] : (
// CHECK-NEXT: tnlm.adamw
// CHECK-NOT: weight_decay
// CHECK-SAME: (tensor<32x8xf32>,
// CHECK-NEXT: tnlm.adamw
// CHECK-NOT: weight_decay
// CHECK-SAME: (tensor<8x8xf32>,
// No weight decay on LRPE θ.
// CHECK-NEXT: tnlm.adamw %[[P3]], %[[G3]], %[[M3]], %[[V3]], %[[STEP]], %[[LR]], %[[SCALE]], %[[HP]] {weight_decay = false}
// CHECK-NEXT: tnlm.adamw
// CHECK-NOT: weight_decay
// CHECK-SAME: (tensor<12x8xf32>,
// CHECK-NEXT: tnlm.adamw
// CHECK-NOT: weight_decay
// CHECK-SAME: (tensor<12x8xf32>,
// CHECK-NEXT: tnlm.adamw
// CHECK-NOT: weight_decay
// CHECK-SAME: (tensor<8x12xf32>,
// CHECK-NEXT: %[[Z0:.*]] = tnlm.fill {value = 0.000000e+00 : f32} : tensor<16x8xf32>
// CHECK-COUNT-6: tnlm.fill {value = 0.000000e+00 : f32}
// CHECK-NEXT: %[[NEXT:.*]] = tnlm.increment %[[STEP]] : tensor<i32>
// CHECK-NEXT: return %[[NORM]], %[[LR]], %[[NP0]], {{.*}}, %[[NM0]], {{.*}}, %[[NV0]], {{.*}}, %[[Z0]], {{.*}}, %[[NEXT]] :
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>,
                %emb: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"},
                %wqkvu: tensor<32x8xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"},
                %wout: tensor<8x8xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"},
                %theta: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"},
                %w1: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"},
                %w2: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"},
                %w3: tensor<8x12xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %emb {padding_idx = 0 : i64, scale = 2.0 : f32} : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %x : tensor<?x?x8xf32>
  %qkvu = tnlm.linear %n, %wqkvu : (tensor<?x?x8xf32>, tensor<32x8xf32>) -> tensor<?x?x32xf32>
  %a = tnlm.lightning_attention %qkvu lrpe(%theta : tensor<2x1x4xf32>) {block_size = 16 : i64, head_dim = 4 : i64, heads = 2 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<?x?x32xf32> -> tensor<?x?x8xf32>
  %o = tnlm.linear %a, %wout : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32>
  %h, %hn = tnlm.add_srms_norm %x, %o : tensor<?x?x8xf32>
  %g = tnlm.gated_linear %hn, %w1, %w2 : (tensor<?x?x8xf32>, tensor<12x8xf32>, tensor<12x8xf32>) -> tensor<?x?x12xf32>
  %m = tnlm.linear %g, %w3 : (tensor<?x?x12xf32>, tensor<8x12xf32>) -> tensor<?x?x8xf32>
  %h2, %hn2 = tnlm.add_srms_norm %h, %m : tensor<?x?x8xf32>
  %z = tnlm.lm_head %hn2, %emb : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// The unfused token mixer (what tnlm-autodiff sees without the fusions), called from @loss
// through @forward (inlined), with an untied head and another ignore index: the VJPs of
// split (concat), silu, split_heads/merge_heads (each other), lrpe, decay_linear_attention,
// srms_norm, mul, add and sglu.
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[IDS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "ids"}, %[[LABELS:[^:]*]]: tensor<?x?xi32> {tnlm.input = "labels"}
// CHECK-SAME: %[[E:[^:]*]]: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"}
// CHECK-SAME: %[[WQKVU:[^:]*]]: tensor<32x8xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"}
// CHECK-SAME: %[[WOUT:[^:]*]]: tensor<8x8xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"}
// CHECK-SAME: %[[TH:[^:]*]]: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}
// CHECK-SAME: %[[W1:[^:]*]]: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"}
// CHECK-SAME: %[[W2:[^:]*]]: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"}
// CHECK-SAME: %[[W3:[^:]*]]: tensor<8x12xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"}
// CHECK-SAME: %[[HEAD:[^:]*]]: tensor<16x8xf32> {tnlm.param = "lm_head.weight"}
// CHECK-SAME: %[[GE:[^:]*]]: tensor<16x8xf32> {tnlm.state = "grad/model.embed_tokens.weight"}
// CHECK-SAME: %[[GHEAD:[^:]*]]: tensor<16x8xf32> {tnlm.state = "grad/lm_head.weight"})
// CHECK-NOT: call
// CHECK: %[[X:.*]] = tnlm.embedding %[[IDS]], %[[E]]
// CHECK-NEXT: %[[N:.*]] = tnlm.srms_norm %[[X]]
// CHECK-NEXT: %[[QKVU:.*]] = tnlm.linear %[[N]], %[[WQKVU]]
// CHECK-NEXT: %[[P:.*]]:4 = tnlm.split %[[QKVU]]
// CHECK-NEXT: %[[Q:.*]] = tnlm.silu %[[P]]#0
// CHECK-NEXT: %[[K:.*]] = tnlm.silu %[[P]]#1
// CHECK-NEXT: %[[QH:.*]] = tnlm.split_heads %[[Q]]
// CHECK-NEXT: %[[KH:.*]] = tnlm.split_heads %[[K]]
// CHECK-NEXT: %[[VH:.*]] = tnlm.split_heads %[[P]]#2
// CHECK-NEXT: %[[QR:.*]] = tnlm.lrpe %[[QH]], %[[TH]]
// CHECK-NEXT: %[[KR:.*]] = tnlm.lrpe %[[KH]], %[[TH]]
// CHECK-NEXT: %[[OH:.*]] = tnlm.decay_linear_attention %[[QR]], %[[KR]], %[[VH]]
// CHECK-NEXT: %[[OM:.*]] = tnlm.merge_heads %[[OH]]
// CHECK-NEXT: %[[ON:.*]] = tnlm.srms_norm %[[OM]]
// CHECK-NEXT: %[[GATED:.*]] = tnlm.mul %[[P]]#3, %[[ON]]
// CHECK-NEXT: %[[A:.*]] = tnlm.linear %[[GATED]], %[[WOUT]]
// CHECK-NEXT: %[[H:.*]] = tnlm.add %[[X]], %[[A]]
// CHECK-NEXT: %[[HN:.*]] = tnlm.srms_norm %[[H]]
// CHECK-NEXT: %[[C:.*]] = tnlm.sglu %[[HN]], %[[W1]], %[[W2]], %[[W3]]
// CHECK-NEXT: %[[H2:.*]] = tnlm.add %[[H]], %[[C]]
// CHECK-NEXT: %[[F:.*]] = tnlm.srms_norm %[[H2]]
// CHECK-NEXT: %[[Z:.*]] = tnlm.lm_head %[[F]], %[[HEAD]]
// CHECK-NEXT: %[[L:.*]] = tnlm.cross_entropy %[[Z]], %[[LABELS]] {ignore_index = -1 : i64}
// CHECK-NEXT: %[[SEED:.*]] = tnlm.fill {value = 1.000000e+00 : f32} : tensor<f32>
// CHECK-NEXT: %[[DZ:.*]] = tnlm.cross_entropy_grad %[[Z]], %[[LABELS]], %[[SEED]] {ignore_index = -1 : i64}
// CHECK-NEXT: %[[DF:.*]] = tnlm.linear_input_grad %[[DZ]], %[[HEAD]]
// CHECK-NEXT: %[[DHEAD:.*]] = tnlm.linear_weight_grad %[[DZ]], %[[F]]
// CHECK-NEXT: tnlm.add %[[GHEAD]], %[[DHEAD]] : tensor<16x8xf32>
// CHECK-NEXT: %[[DH2:.*]] = tnlm.srms_norm_grad %[[H2]], %[[DF]]
// sglu: h = gated_linear(x) recomputed for dW3, then the gated backward.
// CHECK-NEXT: %[[HG:.*]] = tnlm.gated_linear %[[HN]], %[[W1]], %[[W2]]
// CHECK-NEXT: %[[DHG:.*]] = tnlm.linear_input_grad %[[DH2]], %[[W3]]
// CHECK-NEXT: %[[DW3:.*]] = tnlm.linear_weight_grad %[[DH2]], %[[HG]]
// CHECK-NEXT: %[[DHN:.*]], %[[DW1:.*]], %[[DW2:.*]] = tnlm.gated_linear_grad %[[HN]], %[[W1]], %[[W2]], %[[DHG]]
// CHECK-NEXT: tnlm.add %{{.*}}, %[[DW1]] : tensor<12x8xf32>
// CHECK-NEXT: tnlm.add %{{.*}}, %[[DW2]] : tensor<12x8xf32>
// CHECK-NEXT: tnlm.add %{{.*}}, %[[DW3]] : tensor<8x12xf32>
// CHECK-NEXT: %[[DHNX:.*]] = tnlm.srms_norm_grad %[[H]], %[[DHN]]
// add: both operands get the result's cotangent; h's two uses are summed.
// CHECK-NEXT: %[[DH:.*]] = tnlm.add %[[DH2]], %[[DHNX]]
// CHECK-NEXT: %[[DGATED:.*]] = tnlm.linear_input_grad %[[DH]], %[[WOUT]]
// CHECK-NEXT: %[[DWOUT:.*]] = tnlm.linear_weight_grad %[[DH]], %[[GATED]]
// CHECK-NEXT: tnlm.add %{{.*}}, %[[DWOUT]] : tensor<8x8xf32>
// mul: d lhs = g·rhs, d rhs = g·lhs.
// CHECK-NEXT: %[[DU:.*]] = tnlm.mul %[[DGATED]], %[[ON]]
// CHECK-NEXT: %[[DON:.*]] = tnlm.mul %[[DGATED]], %[[P]]#3
// CHECK-NEXT: %[[DOM:.*]] = tnlm.srms_norm_grad %[[OM]], %[[DON]]
// CHECK-NEXT: %[[DOH:.*]] = tnlm.split_heads %[[DOM]] : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
// The recurrent backward reads the forward's q, k (after LRPE) and v.
// CHECK-NEXT: %[[DQR:.*]], %[[DKR:.*]], %[[DVH:.*]] = tnlm.decay_linear_attention_grad %[[QR]], %[[KR]], %[[VH]], %[[DOH]] {slopes = array<f32: 5.000000e-01, 2.500000e-01>}
// lrpe_grad reads the input before LRPE and θ; the θ gradients of k and q are both added
// to θ's state.
// CHECK-NEXT: %[[DKH:.*]], %[[DTHK:.*]] = tnlm.lrpe_grad %[[KH]], %[[TH]], %[[DKR]] : (tensor<?x?x2x4xf32>, tensor<2x1x4xf32>, tensor<?x?x2x8xf32>) -> (tensor<?x?x2x4xf32>, tensor<2x1x4xf32>)
// CHECK-NEXT: %[[GTH1:.*]] = tnlm.add %{{.*}}, %[[DTHK]] : tensor<2x1x4xf32>
// CHECK-NEXT: %[[DQH:.*]], %[[DTHQ:.*]] = tnlm.lrpe_grad %[[QH]], %[[TH]], %[[DQR]]
// CHECK-NEXT: tnlm.add %[[GTH1]], %[[DTHQ]] : tensor<2x1x4xf32>
// CHECK-NEXT: %[[DV:.*]] = tnlm.merge_heads %[[DVH]] : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
// CHECK-NEXT: %[[DK:.*]] = tnlm.merge_heads %[[DKH]]
// CHECK-NEXT: %[[DQ:.*]] = tnlm.merge_heads %[[DQH]]
// silu_grad reads silu's input.
// CHECK-NEXT: %[[DPK:.*]] = tnlm.silu_grad %[[P]]#1, %[[DK]]
// CHECK-NEXT: %[[DPQ:.*]] = tnlm.silu_grad %[[P]]#0, %[[DQ]]
// split: the parts' cotangents concatenated in the split's order.
// CHECK-NEXT: %[[DQKVU:.*]] = tnlm.concat %[[DPQ]], %[[DPK]], %[[DV]], %[[DU]] : tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32> -> tensor<?x?x32xf32>
// CHECK-NEXT: %[[DN:.*]] = tnlm.linear_input_grad %[[DQKVU]], %[[WQKVU]]
// CHECK-NEXT: %[[DWQKVU:.*]] = tnlm.linear_weight_grad %[[DQKVU]], %[[N]]
// CHECK-NEXT: tnlm.add %{{.*}}, %[[DWQKVU]] : tensor<32x8xf32>
// CHECK-NEXT: %[[DXN:.*]] = tnlm.srms_norm_grad %[[X]], %[[DN]]
// CHECK-NEXT: %[[DX:.*]] = tnlm.add %[[DH]], %[[DXN]]
// Untied: the embedding gradient is the scatter-add alone (default scale 1).
// CHECK-NEXT: %[[DE:.*]] = tnlm.embedding_grad %[[IDS]], %[[DX]] : (tensor<?x?xi32>, tensor<?x?x8xf32>) -> tensor<16x8xf32>
// CHECK-NEXT: tnlm.add %[[GE]], %[[DE]] : tensor<16x8xf32>
// CHECK-NEXT: return %[[L]],
// CHECK-LABEL: func.func @optimizer_step(
// CHECK: tnlm.adamw {{.*}} {weight_decay = false} : (tensor<2x1x4xf32>,
// CHECK-NOT: weight_decay
// CHECK: tnlm.increment
func.func @forward(%ids: tensor<?x?xi32>,
                   %emb: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"},
                   %wqkvu: tensor<32x8xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"},
                   %wout: tensor<8x8xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"},
                   %theta: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"},
                   %w1: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"},
                   %w2: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"},
                   %w3: tensor<8x12xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"},
                   %head: tensor<16x8xf32> {tnlm.param = "lm_head.weight"}) -> tensor<?x?x16xf32> {
  %x = tnlm.embedding %ids, %emb : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %n = tnlm.srms_norm %x : tensor<?x?x8xf32>
  %qkvu = tnlm.linear %n, %wqkvu : (tensor<?x?x8xf32>, tensor<32x8xf32>) -> tensor<?x?x32xf32>
  %p:4 = tnlm.split %qkvu : tensor<?x?x32xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %q = tnlm.silu %p#0 : tensor<?x?x8xf32>
  %k = tnlm.silu %p#1 : tensor<?x?x8xf32>
  %qh = tnlm.split_heads %q : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %kh = tnlm.split_heads %k : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %vh = tnlm.split_heads %p#2 : tensor<?x?x8xf32> -> tensor<?x?x2x4xf32>
  %qr = tnlm.lrpe %qh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %kr = tnlm.lrpe %kh, %theta : tensor<?x?x2x4xf32>, tensor<2x1x4xf32> -> tensor<?x?x2x8xf32>
  %o = tnlm.decay_linear_attention %qr, %kr, %vh {slopes = array<f32: 0.5, 0.25>} : (tensor<?x?x2x8xf32>, tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) -> tensor<?x?x2x4xf32>
  %om = tnlm.merge_heads %o : tensor<?x?x2x4xf32> -> tensor<?x?x8xf32>
  %on = tnlm.srms_norm %om : tensor<?x?x8xf32>
  %gated = tnlm.mul %p#3, %on : tensor<?x?x8xf32>
  %a = tnlm.linear %gated, %wout : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32>
  %h = tnlm.add %x, %a : tensor<?x?x8xf32>
  %hn = tnlm.srms_norm %h : tensor<?x?x8xf32>
  %c = tnlm.sglu %hn, %w1, %w2, %w3 : (tensor<?x?x8xf32>, tensor<12x8xf32>, tensor<12x8xf32>, tensor<8x12xf32>) -> tensor<?x?x8xf32>
  %h2 = tnlm.add %h, %c : tensor<?x?x8xf32>
  %f = tnlm.srms_norm %h2 : tensor<?x?x8xf32>
  %z = tnlm.lm_head %f, %head : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  return %z : tensor<?x?x16xf32>
}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>,
                %emb: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"},
                %wqkvu: tensor<32x8xf32> {tnlm.param = "model.layers.0.token_mixer.qkvu_proj.weight"},
                %wout: tensor<8x8xf32> {tnlm.param = "model.layers.0.token_mixer.out_proj.weight"},
                %theta: tensor<2x1x4xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"},
                %w1: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l1.weight"},
                %w2: tensor<12x8xf32> {tnlm.param = "model.layers.0.channel_mixer.l2.weight"},
                %w3: tensor<8x12xf32> {tnlm.param = "model.layers.0.channel_mixer.l3.weight"},
                %head: tensor<16x8xf32> {tnlm.param = "lm_head.weight"}) -> tensor<f32> {
  %z = call @forward(%ids, %emb, %wqkvu, %wout, %theta, %w1, %w2, %w3, %head) : (tensor<?x?xi32>, tensor<16x8xf32>, tensor<32x8xf32>, tensor<8x8xf32>, tensor<2x1x4xf32>, tensor<12x8xf32>, tensor<12x8xf32>, tensor<8x12xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels {ignore_index = -1 : i64} : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// A split part without a cotangent gets a zero one shaped like it (dynamic dims from the
// part itself); a value used twice by one op (x·x) gets both contributions; a parameter the
// loss does not depend on keeps its gradient state as it was. Backward ops are located at
// `<forward op's name>/grad`.
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[W:[^:]*]]: tensor<24x8xf32> {tnlm.param = "w"}
// CHECK-SAME: %[[GUNUSED:[^:]*]]: tensor<4x4xf32> {tnlm.state = "grad/unused"})
// CHECK: %[[P:.*]]:3 = tnlm.split
// CHECK: %[[DS:.*]] = tnlm.linear_input_grad
// CHECK-NEXT: tnlm.linear_weight_grad
// CHECK-NEXT: tnlm.add
// CHECK-NEXT: %[[D1:.*]] = tnlm.mul %[[DS]], %[[P]]#0
// CHECK-NEXT: %[[D2:.*]] = tnlm.mul %[[DS]], %[[P]]#0
// CHECK-NEXT: %[[DP0:.*]] = tnlm.add %[[D1]], %[[D2]]
// CHECK-NEXT: %[[Z1:.*]] = tnlm.fill like(%[[P]]#1 : tensor<?x?x8xf32>) {value = 0.000000e+00 : f32} : tensor<?x?x8xf32>
// CHECK-NEXT: %[[Z2:.*]] = tnlm.fill like(%[[P]]#2 : tensor<?x?x8xf32>) {value = 0.000000e+00 : f32} : tensor<?x?x8xf32>
// CHECK-NEXT: tnlm.concat %[[DP0]], %[[Z1]], %[[Z2]] :
// CHECK: return %{{.*}}, %{{.*}}, %{{.*}}, %[[GUNUSED]] :
// LOC-LABEL: func.func @train_step({{.*}}tnlm.param = "w"
// LOC: tnlm.fill {value = 1.000000e+00 : f32} : tensor<f32> loc("loss/grad")
// LOC-NEXT: tnlm.cross_entropy_grad {{.*}} loc("loss/grad")
// LOC-NEXT: tnlm.linear_input_grad {{.*}} loc("head/grad")
// LOC-NEXT: tnlm.linear_weight_grad {{.*}} loc("head/grad")
// LOC-NEXT: tnlm.add {{.*}} loc("model.embed_tokens.weight/accumulate"(
// LOC-NEXT: tnlm.mul {{.*}} loc("square/grad")
// LOC: tnlm.concat {{.*}} loc("grad"(
// LOC: tnlm.add {{.*}} loc("w/accumulate"(
// LOC: tnlm.embedding_grad {{.*}} loc("embed/grad")
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>,
                %emb: tensor<16x8xf32> {tnlm.param = "model.embed_tokens.weight"},
                %w: tensor<24x8xf32> {tnlm.param = "w"},
                %unused: tensor<4x4xf32> {tnlm.param = "unused"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %emb : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32> loc("embed")
  %y = tnlm.linear %x, %w : (tensor<?x?x8xf32>, tensor<24x8xf32>) -> tensor<?x?x24xf32>
  %p:3 = tnlm.split %y : tensor<?x?x24xf32> -> tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>
  %s = tnlm.mul %p#0, %p#0 : tensor<?x?x8xf32> loc("square")
  %z = tnlm.lm_head %s, %emb : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32> loc("head")
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32> loc("loss")
  return %l : tensor<f32>
}
