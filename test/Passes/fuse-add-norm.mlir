// tnlm-fuse-add-norm: a residual add and the SRMSNorm that reads it become one op.
// RUN: tnlm-opt %s --tnlm-fuse-add-norm -split-input-file | FileCheck %s

// The sum stays the residual stream (read by the next add); the norm feeds the next block.
// CHECK-LABEL: func.func @residual
// CHECK-SAME: (%[[X:[^:]*]]: tensor<?x?x8xf32>, %[[O:[^:]*]]: tensor<?x?x8xf32>, %[[M:[^:]*]]: tensor<?x?x8xf32>)
// CHECK-NEXT: %[[H:.*]], %[[N:.*]] = tnlm.add_srms_norm %[[X]], %[[O]] {eps = 9.99999974E-6 : f32} : tensor<?x?x8xf32>
// CHECK-NEXT: %[[S:.*]] = tnlm.silu %[[N]]
// CHECK-NEXT: %[[R:.*]] = tnlm.add %[[H]], %[[S]]
// CHECK-NEXT: return %[[R]]
func.func @residual(%x: tensor<?x?x8xf32>, %o: tensor<?x?x8xf32>, %m: tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  %h = tnlm.add %x, %o : tensor<?x?x8xf32>
  %n = tnlm.srms_norm %h {eps = 1.0e-5 : f32} : tensor<?x?x8xf32>
  %s = tnlm.silu %n : tensor<?x?x8xf32>
  %r = tnlm.add %h, %s : tensor<?x?x8xf32>
  return %r : tensor<?x?x8xf32>
}

// -----

// The final norm: the sum has no other user (its result is simply unused).
// CHECK-LABEL: func.func @final_norm
// CHECK-NEXT: %{{.*}}, %[[N:.*]] = tnlm.add_srms_norm
// CHECK-NEXT: return %[[N]]
func.func @final_norm(%x: tensor<4x8xf32>, %m: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %h = tnlm.add %x, %m : tensor<4x8xf32>
  %n = tnlm.srms_norm %h : tensor<4x8xf32>
  return %n : tensor<4x8xf32>
}

// -----

// A norm of the embedding (layer 0's pre-norm) and an add without a norm: left as they were.
// CHECK-LABEL: func.func @no_add_no_norm
// CHECK-NEXT: tnlm.srms_norm
// CHECK-NEXT: tnlm.add
// CHECK-NEXT: return
// CHECK-NOT: add_srms_norm
func.func @no_add_no_norm(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %n = tnlm.srms_norm %x : tensor<4x8xf32>
  %r = tnlm.add %x, %n : tensor<4x8xf32>
  return %r : tensor<4x8xf32>
}
