// The infer pipeline removes dead and duplicated pure tnlm ops.
// RUN: tnlm-opt %s --tnlm-infer-pipeline | FileCheck %s
// RUN: tnlm-opt %s --pass-pipeline='builtin.module(tnlm-infer-pipeline)' | FileCheck %s

// CHECK-LABEL: func.func @f
// CHECK-SAME: (%[[X:.*]]: tensor<4x8xf32>)
// CHECK-NEXT: %[[N:.*]] = tnlm.srms_norm %[[X]]
// CHECK-NEXT: %[[S:.*]] = tnlm.silu %[[N]]
// CHECK-NEXT: %[[M:.*]] = tnlm.mul %[[S]], %[[S]]
// CHECK-NEXT: return %[[M]]
func.func @f(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %n = tnlm.srms_norm %x : tensor<4x8xf32>
  %dead = tnlm.add %x, %x : tensor<4x8xf32>
  %a = tnlm.silu %n : tensor<4x8xf32>
  %b = tnlm.silu %n : tensor<4x8xf32>
  %m = tnlm.mul %a, %b : tensor<4x8xf32>
  return %m : tensor<4x8xf32>
}
