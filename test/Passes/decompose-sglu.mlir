// RUN: tnlm-opt %s --tnlm-decompose-sglu | FileCheck %s

// CHECK-LABEL: func.func @sglu
// CHECK-SAME: (%[[X:.*]]: tensor<?x?x8xbf16>, %[[W1:.*]]: tensor<16x8xbf16>, %[[W2:.*]]: tensor<16x8xbf16>, %[[W3:.*]]: tensor<8x16xbf16>)
// CHECK: %[[A:.*]] = tnlm.linear %[[X]], %[[W1]] : (tensor<?x?x8xbf16>, tensor<16x8xbf16>) -> tensor<?x?x16xbf16>
// CHECK: %[[B:.*]] = tnlm.linear %[[X]], %[[W2]] : (tensor<?x?x8xbf16>, tensor<16x8xbf16>) -> tensor<?x?x16xbf16>
// CHECK: %[[P:.*]] = tnlm.mul %[[A]], %[[B]] : tensor<?x?x16xbf16>
// CHECK: %[[Y:.*]] = tnlm.linear %[[P]], %[[W3]] : (tensor<?x?x16xbf16>, tensor<8x16xbf16>) -> tensor<?x?x8xbf16>
// CHECK-NOT: tnlm.sglu
// CHECK: return %[[Y]]
func.func @sglu(%x: tensor<?x?x8xbf16>, %w1: tensor<16x8xbf16>, %w2: tensor<16x8xbf16>, %w3: tensor<8x16xbf16>) -> tensor<?x?x8xbf16> {
  %y = tnlm.sglu %x, %w1, %w2, %w3 : (tensor<?x?x8xbf16>, tensor<16x8xbf16>, tensor<16x8xbf16>, tensor<8x16xbf16>) -> tensor<?x?x8xbf16>
  return %y : tensor<?x?x8xbf16>
}

// Ops other than sglu are left alone.
// CHECK-LABEL: func.func @no_sglu
// CHECK-NEXT: tnlm.silu
// CHECK-NEXT: return
func.func @no_sglu(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %y = tnlm.silu %x : tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
