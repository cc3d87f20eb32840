// tnlm-fuse-sglu: both forms of the channel mixer, and the cases it must leave alone.
// RUN: tnlm-opt %s --tnlm-fuse-sglu -split-input-file | FileCheck %s
// RUN: tnlm-opt %s --tnlm-decompose-sglu --tnlm-fuse-sglu -split-input-file | FileCheck %s --check-prefix=ROUNDTRIP

// CHECK-LABEL: func.func @sglu
// CHECK-SAME: (%[[X:[^:]*]]: tensor<?x?x8xf32>, %[[W1:[^:]*]]: tensor<16x8xf32>, %[[W2:[^:]*]]: tensor<16x8xf32>, %[[W3:[^:]*]]: tensor<8x16xf32>)
// CHECK-NEXT: %[[P:.*]] = tnlm.gated_linear %[[X]], %[[W1]], %[[W2]] : (tensor<?x?x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
// CHECK-NEXT: %[[Y:.*]] = tnlm.linear %[[P]], %[[W3]] : (tensor<?x?x16xf32>, tensor<8x16xf32>) -> tensor<?x?x8xf32>
// CHECK-NEXT: return %[[Y]]
// The decomposed form comes back as the same two ops.
// ROUNDTRIP-LABEL: func.func @sglu
// ROUNDTRIP-NEXT: tnlm.gated_linear
// ROUNDTRIP-NEXT: tnlm.linear
// ROUNDTRIP-NEXT: return
func.func @sglu(%x: tensor<?x?x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<16x8xf32>, %w3: tensor<8x16xf32>) -> tensor<?x?x8xf32> {
  %y = tnlm.sglu %x, %w1, %w2, %w3 : (tensor<?x?x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>, tensor<8x16xf32>) -> tensor<?x?x8xf32>
  return %y : tensor<?x?x8xf32>
}

// -----

// The product of two projections of one input (operands in either order).
// CHECK-LABEL: func.func @decomposed
// CHECK-SAME: (%[[X:[^:]*]]: tensor<4x8xf32>, %[[W1:[^:]*]]: tensor<16x8xf32>, %[[W2:[^:]*]]: tensor<16x8xf32>)
// CHECK-NEXT: %[[P:.*]] = tnlm.gated_linear %[[X]], %[[W2]], %[[W1]]
// CHECK-NEXT: return %[[P]]
func.func @decomposed(%x: tensor<4x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<16x8xf32>) -> tensor<4x16xf32> {
  %a = tnlm.linear %x, %w1 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %b = tnlm.linear %x, %w2 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %p = tnlm.mul %b, %a : tensor<4x16xf32>
  return %p : tensor<4x16xf32>
}

// -----

// Projections of different inputs: left as they were.
// CHECK-LABEL: func.func @different_inputs
// CHECK-NEXT: tnlm.linear
// CHECK-NEXT: tnlm.linear
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @different_inputs(%x: tensor<4x8xf32>, %z: tensor<4x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<16x8xf32>) -> tensor<4x16xf32> {
  %a = tnlm.linear %x, %w1 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %b = tnlm.linear %z, %w2 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %p = tnlm.mul %a, %b : tensor<4x16xf32>
  return %p : tensor<4x16xf32>
}

// -----

// One projection is also returned: fusing would recompute it; left as it was.
// CHECK-LABEL: func.func @projection_used_elsewhere
// CHECK-NEXT: tnlm.linear
// CHECK-NEXT: tnlm.linear
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @projection_used_elsewhere(%x: tensor<4x8xf32>, %w1: tensor<16x8xf32>, %w2: tensor<16x8xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>) {
  %a = tnlm.linear %x, %w1 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %b = tnlm.linear %x, %w2 : (tensor<4x8xf32>, tensor<16x8xf32>) -> tensor<4x16xf32>
  %p = tnlm.mul %a, %b : tensor<4x16xf32>
  return %p, %a : tensor<4x16xf32>, tensor<4x16xf32>
}

// -----

// A product that is not of projections (the token mixer's gate): left as it was.
// CHECK-LABEL: func.func @not_projections
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: tnlm.mul
// CHECK-NEXT: return
func.func @not_projections(%x: tensor<4x8xf32>, %u: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %s = tnlm.silu %x : tensor<4x8xf32>
  %p = tnlm.mul %u, %s : tensor<4x8xf32>
  return %p : tensor<4x8xf32>
}
