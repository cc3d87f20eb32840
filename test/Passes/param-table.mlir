// RUN: tnlm-opt %s --tnlm-print-param-table | FileCheck %s
// RUN: tnlm-opt %s --tnlm-print-param-table=output=%t.txt | FileCheck %s --check-prefix=IR
// RUN: FileCheck %s < %t.txt
// RUN: not tnlm-opt %s --tnlm-print-param-table=output=/nonexistent/dir/x.txt 2>&1 | FileCheck %s --check-prefix=BADPATH

// CHECK: parameters of @f: 2
// CHECK-NEXT: model.embed_tokens.weight [256x64] bf16 16384
// CHECK-NEXT: model.layers.0.token_mixer.lrpe.theta [2x1x32] f32 64
// CHECK-NEXT: total 16448
// CHECK-NOT: parameters of @g

// The IR itself is unchanged.
// IR: func.func @f
// IR: func.func @g

// BADPATH: error: tnlm-print-param-table: cannot open output file '/nonexistent/dir/x.txt'
func.func @f(%ids: tensor<?x?xi32>,
             %e: tensor<256x64xbf16> {tnlm.param = "model.embed_tokens.weight"},
             %t: tensor<2x1x32xf32> {tnlm.param = "model.layers.0.token_mixer.lrpe.theta"}) {
  return
}
func.func @g(%x: tensor<4xf32>) {
  return
}
