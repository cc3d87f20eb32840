// tnlm-choose-tiles: the cost model's picks, a recorded block kept, the option overriding.
// RUN: tnlm-opt %s --tnlm-choose-tiles | FileCheck %s --check-prefix=CPU
// RUN: tnlm-opt %s --tnlm-choose-tiles='target=cuda:sm_90a' | FileCheck %s --check-prefix=GPU
// RUN: tnlm-opt %s --tnlm-choose-tiles='max-seq=8' | FileCheck %s --check-prefix=SHORT
// RUN: tnlm-opt %s --tnlm-choose-tiles='block-size=48' | FileCheck %s --check-prefix=FORCE
// RUN: not tnlm-opt %s --tnlm-choose-tiles='target=cuda:sm_80' 2>&1 | FileCheck %s --check-prefix=TARGET
// RUN: not tnlm-opt %s --tnlm-choose-tiles='max-seq=0' 2>&1 | FileCheck %s --check-prefix=SEQ

// dh = 128 without LRPE (dk = dv = 128), dh = 128 with LRPE (dk = 256), the tiny model's
// LRPE layer (dh = 32, dk = 64), and one whose block was recorded by the fusion pass.
// CPU-LABEL: func.func @f
// CPU: tnlm.lightning_attention {{.*}}block_size = 32 : i64, head_dim = 128
// CPU: tnlm.lightning_attention {{.*}}block_size = 32 : i64, head_dim = 128
// CPU: tnlm.lightning_attention {{.*}}block_size = 32 : i64, head_dim = 32
// CPU: tnlm.lightning_attention {{.*}}block_size = 100 : i64, head_dim = 32
// On sm_90a a block of 128 would not fit in shared memory; LRPE doubles Q, K and the state.
// GPU: tnlm.lightning_attention {{.*}}block_size = 64 : i64, head_dim = 128
// GPU: tnlm.lightning_attention {{.*}}block_size = 32 : i64, head_dim = 128
// GPU: tnlm.lightning_attention {{.*}}block_size = 128 : i64, head_dim = 32
// GPU: tnlm.lightning_attention {{.*}}block_size = 100 : i64, head_dim = 32
// Every block covers 8 tokens: the smallest candidate.
// SHORT-COUNT-3: tnlm.lightning_attention {{.*}}block_size = 16 : i64
// SHORT: block_size = 100 : i64
// FORCE-COUNT-4: tnlm.lightning_attention {{.*}}block_size = 48 : i64
// TARGET: error: tnlm-choose-tiles: unknown target 'cuda:sm_80' (expected cpu or cuda:sm_90a)
// SEQ: error: tnlm-choose-tiles: max-seq must be >= 1 and block-size >= 0, got 0 and 0
func.func @f(%a: tensor<?x?x1024xf32>, %t: tensor<2x1x128xf32>, %b: tensor<?x?x256xf32>, %t2: tensor<2x1x32xf32>)
    -> (tensor<?x?x256xf32>, tensor<?x?x256xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>) {
  %0 = tnlm.lightning_attention %a {heads = 2 : i64, head_dim = 128 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<?x?x1024xf32> -> tensor<?x?x256xf32>
  %1 = tnlm.lightning_attention %a lrpe(%t : tensor<2x1x128xf32>) {heads = 2 : i64, head_dim = 128 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<?x?x1024xf32> -> tensor<?x?x256xf32>
  %2 = tnlm.lightning_attention %b lrpe(%t2 : tensor<2x1x32xf32>) {heads = 2 : i64, head_dim = 32 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  %3 = tnlm.lightning_attention %b {heads = 2 : i64, head_dim = 32 : i64, block_size = 100 : i64, slopes = array<f32: 0.5, 0.25>} : tensor<?x?x256xf32> -> tensor<?x?x64xf32>
  return %0, %1, %2, %3 : tensor<?x?x256xf32>, tensor<?x?x256xf32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>
}
