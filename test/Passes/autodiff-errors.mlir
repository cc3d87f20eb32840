// tnlm-autodiff on modules it cannot differentiate: one clear error each, at the op or
// function at fault, and the pass fails.
// RUN: tnlm-opt %s --tnlm-autodiff -split-input-file -verify-diagnostics --allow-unregistered-dialect
// RUN: not tnlm-opt %s --tnlm-autodiff=function=objective -split-input-file --allow-unregistered-dialect 2>&1 | FileCheck %s --check-prefix=NAMED

// No loss function at all; the `function` option names another one.
// NAMED: error: tnlm-autodiff: no function @objective to differentiate
// expected-error @below {{tnlm-autodiff: no function @loss to differentiate}}
module {
  func.func @forward(%ids: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<?x?x8xf32> {
    %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
    return %x : tensor<?x?x8xf32>
  }
}

// -----

// @loss returns the logits instead of the mean loss.
// expected-error @+1 {{@loss must return one rank-0 f32 tensor (the mean loss)}}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<?x?x16xf32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %z = tnlm.lm_head %x, %e : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  return %z : tensor<?x?x16xf32>
}

// -----

// Two results.
// expected-error @+1 {{@loss must return one rank-0 f32 tensor (the mean loss)}}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %p: tensor<f32> {tnlm.param = "p"}) -> (tensor<f32>, tensor<f32>) {
  return %p, %p : tensor<f32>, tensor<f32>
}

// -----

// A rank-0 loss that is not f32 (the gradient state is f32, and so is the seed).
// expected-error @+1 {{@loss must return one rank-0 f32 tensor (the mean loss)}}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %p: tensor<f16> {tnlm.param = "p"}) -> tensor<f16> {
  return %p : tensor<f16>
}

// -----

// Labels missing: one token argument.
// expected-error @+1 {{@loss must take two token arguments (ids, labels), got 1}}
func.func @loss(%ids: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %z = tnlm.lm_head %x, %e : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %ids : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// A weight without tnlm.param: neither a parameter nor ids/labels.
// expected-error @+1 {{argument #2 of @loss must be a parameter or i32 [batch, seq] ids/labels}}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %w: tensor<16x8xf32>) -> tensor<f32> {
  %x = tnlm.embedding %ids, %w : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %z = tnlm.lm_head %x, %w : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// Ids of rank 1.
// expected-error @+1 {{argument #0 of @loss must be a parameter or i32 [batch, seq] ids/labels}}
func.func @loss(%ids: tensor<?xi32>, %labels: tensor<?x?xi32>, %p: tensor<f32> {tnlm.param = "p"}) -> tensor<f32> {
  return %p : tensor<f32>
}

// -----

// Nothing to train.
// expected-error @+1 {{@loss has no parameters to train}}
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>) -> tensor<f32> {
  %c = tnlm.fill {value = 0.0 : f32} : tensor<f32>
  return %c : tensor<f32>
}

// -----

// A declaration: no body to differentiate.
// expected-error @+1 {{@loss is a declaration without a body, nothing to differentiate}}
func.func private @loss(tensor<?x?xi32>, tensor<?x?xi32>, tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32>

// -----

// A call to an external function on the path to the loss: named at the call.
func.func private @mystery(tensor<?x?x8xf32>) -> tensor<?x?x8xf32>
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  // expected-error @+1 {{calls @mystery, a declaration without a body, which cannot be differentiated}}
  %y = call @mystery(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32>
  %z = tnlm.lm_head %y, %e : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// A tnlm op without a VJP on the path to the loss (concat is only built by the backward).
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  // expected-error @+1 {{'tnlm.concat' is on the path to the loss but is not differentiable (it does not implement VjpOpInterface)}}
  %c = tnlm.concat %x, %x : tensor<?x?x8xf32>, tensor<?x?x8xf32> -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %c, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// An op of an unknown dialect on the path to the loss.
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  // expected-error @+1 {{'test.unknown' is on the path to the loss but is not differentiable (it does not implement VjpOpInterface)}}
  %y = "test.unknown"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32>
  %z = tnlm.lm_head %y, %e : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// A non-differentiable op off the path to the loss is fine (its result gets no cotangent).
func.func @loss(%ids: tensor<?x?xi32>, %labels: tensor<?x?xi32>, %e: tensor<16x8xf32> {tnlm.param = "e"}) -> tensor<f32> {
  %x = tnlm.embedding %ids, %e : (tensor<?x?xi32>, tensor<16x8xf32>) -> tensor<?x?x8xf32>
  %unused = tnlm.concat %x, %x : tensor<?x?x8xf32>, tensor<?x?x8xf32> -> tensor<?x?x16xf32>
  %z = tnlm.lm_head %x, %e : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %l = tnlm.cross_entropy %z, %labels : (tensor<?x?x16xf32>, tensor<?x?xi32>) -> tensor<f32>
  return %l : tensor<f32>
}
